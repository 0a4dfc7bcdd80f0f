"""One symbol's pipeline: the parent run chaining the stage entry points (``run``), the stages
declared once (``stages``), the stage cache and its lease (``cache``), and re-running a past stage
from its commit (``reproduce``)."""
