"""The closed loop: a scheduler that acts on verdicts read from Redis (docs/closed-loop.md).

One file per concern: :mod:`.actions` (what can be done, and the simulator actuator),
:mod:`.policy` (directive -> action, entity -> target), :mod:`.safety` (capacity cap, rate
limit, dwell), :mod:`.audit` (JSON-lines audit log), :mod:`.controller` (the decision loop over
the scheduler client), :mod:`.feed` (verdicts into Redis, cache caught up), :mod:`.stepper`
(the simulator one frame period at a time), :mod:`.inject` (wrong attributions, telemetry outages),
:mod:`.loop` (one event-time episode), :mod:`.metrics`, :mod:`.experiment` (off / dry-run / on),
:mod:`.report` (HTML) and :mod:`.cli` (``skewscope closed-loop``).
"""
