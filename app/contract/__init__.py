"""The contract the web app and the worker share: the training spec (`spec`) and the dataset
row formats (`formats`). Plain pydantic and Python: no database, no web stack, no ML."""
