"""Every logged value, from one step's tensors to the loggers.

``layout`` fixes where each value of a key set sits, ``accumulators`` keep running sums on the
device and reduce them over ranks in one collective, ``windows`` holds the lifecycle (sessions,
windows, epochs), ``recorder`` hands the means to Lightning, ``progress_bar`` feeds the bar,
``summaries`` and ``names`` say what loggers cannot infer.
"""
