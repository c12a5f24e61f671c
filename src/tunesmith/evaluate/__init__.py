"""The evaluation stage: the one generative evaluation step (baseline and eval), task metrics, classification and
preference metrics, one bootstrap and macro-F1 (``stats``), and the decision report (console and HTML)."""
