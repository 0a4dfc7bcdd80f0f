"""MLflow plumbing, one module per concern: the store and a stage's run (``tracking``), the run
contract (``records``: tag names, each step's artifacts, look-ups), quoted search filters
(``filters``), entry points as child runs (``projects``), what a person reads on a run page
(``notes``, ``formatting``) and the review as a trace (``review_trace``)."""
