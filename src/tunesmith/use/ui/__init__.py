"""``tunesmith ui``: one web page for the whole decision order (Data, Train, Decide, Chat, Export, Runs).

Page logic is plain functions, tested without a browser: paths confined to the workspace root (workspace.py), the
form -> config -> argument list mapping (forms.py, jobs.py), run state read from the run folders (runs.py), the
tabs' actions (actions.py, use_actions.py) and what they show (views.py). The Gradio layout is app.py alone;
server.py checks the address and login and serves it. Needs the ``ui`` extra: ``pip install 'tunesmith[ui]'``.
"""
