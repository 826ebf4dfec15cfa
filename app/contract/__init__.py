"""The contract the web app and the worker share: the training spec (`spec`), the dataset row
formats (`formats`) and what an export may ask for (`export`). Plain pydantic and Python: no
database, no web stack, no ML."""
