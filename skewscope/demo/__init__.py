"""``skewscope demo``: the whole pipeline, live, on a bundled scenario (docs/demo.md).

Modules, one concern each:

* :mod:`~skewscope.demo.cli` - the ``demo`` subcommand;
* :mod:`~skewscope.demo.orchestrator` - the live run: services, children, view, summary, stop;
* :mod:`~skewscope.demo.fallback` - the same detector in process when no broker can be had;
* :mod:`~skewscope.demo.paced` - the simulator published in real time (event time = wall time);
* :mod:`~skewscope.demo.children` - child processes in their own sessions, stopped as groups;
* :mod:`~skewscope.demo.isolation` - a run's private topics, groups and Redis keys, and cleanup;
* :mod:`~skewscope.demo.terminal` - the ANSI table, or plain lines when stdout is not a tty;
* :mod:`~skewscope.demo.summary` - each injected fault and whether a verdict named it;
* :mod:`~skewscope.demo.script` - what the scenario injects at a given moment;
* :mod:`~skewscope.demo.worker` - the worker process with the health page registered.
"""
