"""Dataset files: streaming upload, validation with line-numbered errors, statistics, preview.

- `app.datasets.upload`: `receive_upload` (the multipart body streamed into a staged blob).
- `app.datasets.validation`: `DatasetValidator` and its `ValidationReport`.
- `app.datasets.validator_process`: `ValidatorProcess`, the same validator in a child process.
- `app.datasets.preview`: `read_preview`.

Nothing is imported here, so that the validator's child process starts without the web stack.
"""
