"""Thin layer over confluent-kafka: client configuration, an event producer, a decoding
consumer with a dead-letter path. Nothing else in skewscope builds confluent-kafka clients."""
