"""Errors a user can act on. Their messages are shown as they are on the job page."""


class TrainingError(Exception):
    """A job failed for a reason the user can fix; `str(error)` says what to do."""


class ModelNotFoundError(TrainingError):
    """The base model is neither in the models directory nor in the Hugging Face cache or hub."""


class DatasetError(TrainingError):
    """The dataset file cannot be trained on: empty, unreadable, or nothing left to learn from."""


class ConfigurationError(TrainingError):
    """The spec asks for something this machine or this data cannot do (fp16 on a CPU, early stopping without eval data)."""


class DiskFullError(TrainingError):
    """The disk filled while training wrote to it; the last whole checkpoint is kept."""


class OutOfMemoryError(TrainingError):
    """Training did not fit in the device's memory."""


class InferenceError(TrainingError):
    """A chat request this model cannot answer: a classifier, a conversation longer than it reads."""
