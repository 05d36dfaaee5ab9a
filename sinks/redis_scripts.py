"""Lua scripts of the Redis sink: each one change, applied atomically, then announced.

KEYS of ``WRITE`` and ``EXPIRE`` follow :meth:`sinks.redis_layout.RedisLayout.change_keys`:
1 verdict, 2 versions, 3 entity_deployment, 4 expiry, 5 deployments, 6 deployment hash,
7 ranked, 8 avoid, 9 worst, 10 capacity, 11 history, 12 rebuilding, 13 sink offsets,
14 event expiry.

Versions and event times are int64 nanoseconds, beyond the 2^53 a Lua number holds exactly,
so the scripts compare them as decimal strings (``newer``): callers pass canonical,
non-negative integers without leading zeros. Wall-clock time is the server's ``TIME``.
"""

from __future__ import annotations

_COMMON = r"""
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(x) return string.format('%.0f', x) end
local function rebuild_avoid(ranked, avoid, capacity, dep_hash, deployment, share)
  redis.call('DEL', avoid)
  local n = tonumber(redis.call('HGET', capacity, deployment) or '0')
  local cap = math.floor(share * n + 1e-9)
  if cap > 0 then
    redis.call('ZRANGESTORE', avoid, ranked, 0, cap - 1, 'REV')
  end
  redis.call('HSET', dep_hash, 'capacity', n, 'avoid_cap', cap)
  return redis.call('ZRANGE', avoid, 0, -1, 'REV', 'WITHSCORES')
end
-- Takes an entity off the sorted sets that list its current verdict; only for the scripts
-- whose KEYS follow change_keys (4 expiry, 7 ranked, 9 worst, 14 event expiry).
local function unlist(entity)
  for _, key in ipairs({KEYS[4], KEYS[7], KEYS[9], KEYS[14]}) do
    redis.call('ZREM', key, entity)
  end
end
local function announce(channel, dep_hash, message)
  redis.call('HINCRBY', dep_hash, 'seq', 1)
  message['deployment_state'] = redis.call('HGETALL', dep_hash)
  redis.call('PUBLISH', channel, cjson.encode(message))
end
"""

# ARGV: 1 entity, 2 deployment, 3 version, 4 kind (verdict|heartbeat), 5 state, 6 score,
# 7 avoidable (1|0), 8 ttl_ms, 9 verdict json, 10 last_seen_ns, 11 kafka timestamp ms (0: none),
# 12 avoid share, 13 history maxlen, 14 channel, 15 freshness bound ns, 16 condition,
# 17-19 the key names of a deployment's ranking, avoid-list and hash less the deployment,
# 20 the record's event-time expiry in ms (last_seen + ttl), 21 the key name of a
# deployment's event expiry less the deployment, 22 the key name of a verdict less the
# entity, 23 "<topic>:<partition>" of the record ('' when it came from no log), 24 its
# offset, 25 the offset after the newest record the sink knows Redis applied from that
# partition ('' unknown).
# Returns {1, version} when applied, {0, current version} when ignored (older or equal),
# {2, Redis's offset after the newest applied record of the partition, -1 none} when Redis
# holds less of the partition than the sink wrote (restored from persistence, or a replica
# after a failover): nothing is applied, the sink reads the partition again from there.
# A verdict whose entity was last seen in another deployment (a rank moved to another
# replica) takes it out of that deployment's ranking and avoid-list, announced there as
# ``moved``: the old replica's scheduler must not keep avoiding it.
WRITE = (
    _COMMON
    + r"""
local entity, deployment, version, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[23] ~= '' then
  local applied_to = redis.call('HGET', KEYS[13], ARGV[23])
  if ARGV[25] ~= '' and ((not applied_to) or tonumber(applied_to) < tonumber(ARGV[25])) then
    return {2, applied_to or '-1'}
  end
  local next_offset = tonumber(ARGV[24]) + 1
  if (not applied_to) or next_offset > tonumber(applied_to) then
    redis.call('HSET', KEYS[13], ARGV[23], string.format('%d', next_offset))
  end
end
local current = redis.call('HGET', KEYS[2], entity)
if current and not newer(version, current) then
  return {0, current}
end
redis.call('HSET', KEYS[2], entity, version)
local now = now_ms()
redis.call('SADD', KEYS[5], deployment)
local last = redis.call('HGET', KEYS[6], 'last_event_ns')
if (not last) or newer(ARGV[10], last) then
  redis.call('HSET', KEYS[6], 'last_event_ns', ARGV[10])
  last = ARGV[10]
end
-- The deployment's event time (the newest it reported, in ms) ends the verdicts whose
-- last_seen + ttl it passed: a sink catching up after a stop does not keep them for a
-- TTL from the write. At most 100 a change; the next change takes the rest.
local horizon = math.floor(tonumber(last) / 1000000)
local gone = {}
for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[14], '-inf', horizon, 'LIMIT', 0, 100)) do
  if e ~= entity then
    redis.call('DEL', ARGV[22] .. e)
    unlist(e)
    gone[#gone + 1] = e
  end
end
if #gone > 0 then
  local left = rebuild_avoid(KEYS[7], KEYS[8], KEYS[10], KEYS[6], deployment, tonumber(ARGV[12]))
  for _, e in ipairs(gone) do
    announce(ARGV[14], KEYS[6], {kind = 'expired', entity = e, deployment = deployment,
                                 version = redis.call('HGET', KEYS[2], e) or '', avoid = left})
  end
end
redis.call('HSET', KEYS[6], 'updated_wall_ms', ms(now))
local kafka_ts = tonumber(ARGV[11])
if kafka_ts > 0 then
  redis.call('HSET', KEYS[6], 'pipeline_lag_ms', ms(now - kafka_ts))
end
local message = {kind = kind, entity = entity, deployment = deployment, version = version}
if kind == 'heartbeat' then
  redis.call('HSET', KEYS[6], 'freshness_bound_ns', ARGV[15])
  message['avoid'] = redis.call('ZRANGE', KEYS[8], 0, -1, 'REV', 'WITHSCORES')
else
  local ttl = tonumber(ARGV[8])
  -- A verdict already past its event-time expiry (last_seen + ttl) by its deployment's
  -- newest event time is stored for 1 ms (its version still counts) and kept off the
  -- rankings. While a sink refills an empty Redis from the topic, the expiry is also read
  -- against Redis's clock, not as a TTL from now: one the detector stopped refreshing long
  -- ago must not come back as current.
  local stale = tonumber(ARGV[20]) <= horizon
  if stale then
    ttl = 1
  elseif redis.call('EXISTS', KEYS[12]) == 1 then
    local left = math.floor(tonumber(ARGV[10]) / 1000000) + ttl - now
    if left <= 0 then
      ttl, stale = 1, true
    elseif left < ttl then
      ttl = left
    end
  end
  local moved_from = redis.call('HGET', KEYS[3], entity)
  redis.call('HSET', KEYS[3], entity, deployment)
  if moved_from and moved_from ~= deployment then
    local old_ranked = ARGV[17] .. moved_from
    local old_hash = ARGV[19] .. moved_from
    redis.call('ZREM', ARGV[21] .. moved_from, entity)
    if redis.call('ZREM', old_ranked, entity) == 1 then
      local old_avoid = rebuild_avoid(old_ranked, ARGV[18] .. moved_from, KEYS[10], old_hash,
                                      moved_from, tonumber(ARGV[12]))
      announce(ARGV[14], old_hash, {kind = 'moved', entity = entity, deployment = moved_from,
                                    version = version, avoid = old_avoid})
    end
  end
  redis.call('SET', KEYS[1], ARGV[9], 'PX', ttl)
  redis.call('ZADD', KEYS[4], ms(now + ttl), entity)
  if stale then
    redis.call('ZREM', KEYS[14], entity)
  else
    redis.call('ZADD', KEYS[14], ARGV[20], entity)
  end
  if ARGV[7] == '1' and not stale then
    redis.call('ZADD', KEYS[7], ARGV[6], entity)
    redis.call('ZADD', KEYS[9], ARGV[6], entity)
  else
    redis.call('ZREM', KEYS[7], entity)
    redis.call('ZREM', KEYS[9], entity)
  end
  message['avoid'] = rebuild_avoid(KEYS[7], KEYS[8], KEYS[10], KEYS[6], deployment,
                                   tonumber(ARGV[12]))
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[13], '*', 'entity', entity,
             'version', version, 'state', ARGV[5], 'condition', ARGV[16], 'verdict', ARGV[9])
  message['verdict'] = ARGV[9]
  message['expires_at_ms'] = ms(now + ttl)
end
announce(ARGV[14], KEYS[6], message)
return {1, version}
"""
)

# ARGV: 1 entity, 2 deployment, 3 avoid share, 4 channel.
# Removes an entity whose verdict key has expired from the rankings; returns 1 when it did.
EXPIRE = (
    _COMMON
    + r"""
local entity, deployment = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if not redis.call('ZSCORE', KEYS[4], entity) then
  return 0
end
unlist(entity)
local avoid = rebuild_avoid(KEYS[7], KEYS[8], KEYS[10], KEYS[6], deployment, tonumber(ARGV[3]))
local version = redis.call('HGET', KEYS[2], entity) or ''
announce(ARGV[4], KEYS[6], {kind = 'expired', entity = entity, deployment = deployment,
                            version = version, avoid = avoid})
return 1
"""
)

# KEYS: 1 capacity, 2 ranked, 3 avoid, 4 deployment hash, 5 deployments.
# ARGV: 1 deployment, 2 entity count, 3 avoid share, 4 channel.
SET_CAPACITY = (
    _COMMON
    + r"""
local deployment = ARGV[1]
redis.call('HSET', KEYS[1], deployment, ARGV[2])
redis.call('SADD', KEYS[5], deployment)
local avoid = rebuild_avoid(KEYS[2], KEYS[3], KEYS[1], KEYS[4], deployment, tonumber(ARGV[3]))
announce(ARGV[4], KEYS[4], {kind = 'capacity', entity = '', deployment = deployment,
                            version = '', avoid = avoid})
return 1
"""
)

# KEYS: 1 sink epoch, 2 rebuilding, 3 rebuild pending. ARGV: 1 the new epoch, 2.. the verdict
# topic's partitions. Starts the epoch unless another sink did first (SET NX): the flag and
# the partitions still to read are set with it, so no sink sees the one without the other.
# Returns 1 when this call started it.
START_EPOCH = r"""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
for i = 2, #ARGV do
  redis.call('SADD', KEYS[3], ARGV[i])
end
return 1
"""

# KEYS: 1 rebuilding, 2 rebuild pending. ARGV: 1 the epoch, 2 channel, 3.. partitions this
# sink has caught up on. Takes them off the pending set; the sink that empties it clears the
# flag and announces ``rebuilt``. Returns 1 then, 0 while partitions remain (or the flag
# names another epoch, or is gone).
CAUGHT_UP = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 3, #ARGV do
  redis.call('SREM', KEYS[2], ARGV[i])
end
if redis.call('SCARD', KEYS[2]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({kind = 'rebuilt', epoch = ARGV[1]}))
return 1
"""
