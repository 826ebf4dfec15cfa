"""Chat with a base model or a fine-tuned one: the tokenizer's chat template, sampling, the
text streamed as it is generated, token counts; and label text with a fine-tuned classifier.

    models = ModelCache(models_dir=Path("/models"))
    with models.use("tiny-llama", weights_dir=Path("runs/42/final")) as model:
        reply = generate_chat(model, [{"role": "user", "content": "Hi"}], Sampling(max_tokens=64),
                              on_text=lambda piece: print(piece, end=""))

A fine-tuned model is its base model plus the job's weights: a PEFT adapter is loaded onto
the cached base (each base is loaded once, whatever the number of adapters used on it, and
the plain base answers with the adapters switched off); full fine-tuned weights are a model
of their own. Conversations are rendered exactly as training rendered them (the tokenizer's
template, ChatML when it has none), so a fine-tuned model sees what it learned from. A
conversation longer than the model reads is refused, or, when the caller asks
(`fit_context=True`), its oldest turns are left out until it fits with room for the answer.

A classifier job's weights label text instead (`classify`): they are loaded as a model of
their own (the base with its classification head and adapter), cached like the chat models.

    with models.classifier("tiny-llama", weights_dir=Path("runs/7/final")) as model:
        labels = classify(model, "what a hot day").probabilities   # {"cool": 0.02, "warm": 0.98}
"""

from __future__ import annotations

import copy
import gc
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.contract.spec import Sampling

from .data import CHATML_TEMPLATE
from .errors import InferenceError
from .loading import classifier_kwargs, load_tokenizer, read_class_names, resolve_model, saved_task


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str  # "stop": the model ended its turn or met a stop string; "length": max_tokens ran out
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int = 0  # oldest messages left out to fit the context (fit_context=True)


@dataclass(frozen=True)
class ClassifierReply:
    probabilities: dict[str, float]  # label -> probability (softmax), in the classifier's class order
    tokens: int  # of the text, as the classifier read it
    truncated: bool  # the text was longer than the model reads: its end was cut


@dataclass(frozen=True)
class ChatModel:
    """A loaded model ready to answer, with the adapter asked for active (or none)."""

    model: Any
    tokenizer: Any
    max_positions: int | None


@dataclass(frozen=True)
class ClassifierModel:
    """A loaded text classifier and its labels, index i of its logits being `class_names[i]`."""

    model: Any
    tokenizer: Any
    class_names: list[str]
    max_positions: int | None


@dataclass
class _Loaded:
    model: Any  # a transformers model, or the PeftModel wrapping it once an adapter is loaded
    tokenizer: Any
    adapters: OrderedDict[str, Path] = field(default_factory=OrderedDict)  # name -> folder, least recently used first


def _weights_kind(weights_dir: Path | None) -> str | None:
    """None for the plain base, "adapter" for a PEFT adapter, "model" for full weights."""
    if weights_dir is None:
        return None
    if not weights_dir.is_dir():
        raise InferenceError("the fine-tuned weights are no longer in the store")
    if read_class_names(weights_dir) is not None:
        raise InferenceError("this model is a text classifier: it labels text, it does not chat")
    if (weights_dir / "adapter_config.json").is_file():
        return "adapter"
    if (weights_dir / "config.json").is_file():
        return "model"
    raise InferenceError(f"{weights_dir.name} holds neither an adapter nor a model")


def _adapter_name(folder: Path) -> str:
    """A name for an adapter folder, new when its weights change."""
    weights = next(folder.glob("adapter_model.*"), folder / "adapter_config.json")
    key = f"{folder.resolve()}:{weights.stat().st_mtime_ns}"
    return "a" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


class ModelCache:
    """The models one process has loaded, kept for the next request: at most `max_models`
    models (bases, or full fine-tunes), least recently used out first, each with up to
    `max_adapters` adapters. Requests take turns (`use` holds a lock): the active adapter is
    the model's state."""

    def __init__(self, models_dir: Path | None, *, max_models: int = 2, max_adapters: int = 8) -> None:
        self.models_dir = models_dir
        self.max_models = max_models
        self.max_adapters = max_adapters
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def classifier(self, base_model: str, weights_dir: Path) -> Iterator[ClassifierModel]:
        """The text classifier a classification job left in `weights_dir` (an adapter with its
        head, or a whole model) on `base_model`. Raises ModelNotFoundError, InferenceError."""
        with self._lock:
            if not weights_dir.is_dir():
                raise InferenceError("the fine-tuned weights are no longer in the store")
            class_names = read_class_names(weights_dir)
            if class_names is None:
                raise InferenceError("this model chats: it was not trained to label text")
            base = resolve_model(base_model, self.models_dir)
            adapter = (weights_dir / "adapter_config.json").is_file()
            key = "classifier:" + (_adapter_name(weights_dir) if adapter else str(weights_dir.resolve()))

            def load(device, dtype):
                from transformers import AutoModelForSequenceClassification

                tokenizer = load_tokenizer(base)
                source = base if adapter else weights_dir
                model = AutoModelForSequenceClassification.from_pretrained(
                    source,
                    dtype=dtype,
                    device_map={"": device},
                    attn_implementation="sdpa",
                    **classifier_kwargs(class_names, tokenizer.pad_token_id),
                )
                if adapter:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, weights_dir)
                return _Loaded(model.eval(), tokenizer)

            loaded = self._cached(key, weights_dir, load)
            max_positions = getattr(loaded.model.config, "max_position_embeddings", None)
            yield ClassifierModel(loaded.model, loaded.tokenizer, class_names, max_positions)

    @contextmanager
    def task_model(self, base_model: str, weights_dir: Path) -> Iterator[Any]:
        """The token classifier, question answerer or encoder-decoder a job left in `weights_dir`
        (see `task_inference`), cached like the others. Raises ModelNotFoundError, InferenceError."""
        from .task_inference import TaskModel, load_task_model

        with self._lock:
            if not weights_dir.is_dir():
                raise InferenceError("the fine-tuned weights are no longer in the store")
            base = resolve_model(base_model, self.models_dir)
            adapter = (weights_dir / "adapter_config.json").is_file()
            key = "task:" + (_adapter_name(weights_dir) if adapter else str(weights_dir.resolve()))

            def load(device, dtype):
                model, tokenizer, _task = load_task_model(base, weights_dir, device, dtype)
                return _Loaded(model, tokenizer)

            loaded = self._cached(key, weights_dir, load)
            yield TaskModel(loaded.model, loaded.tokenizer, saved_task(weights_dir))

    @contextmanager
    def use(self, base_model: str, weights_dir: Path | None = None) -> Iterator[ChatModel]:
        """The base model, with the fine-tuned weights in `weights_dir` (an adapter or a
        whole model) when given. Raises ModelNotFoundError, InferenceError."""
        with self._lock:
            kind = _weights_kind(weights_dir)
            base = resolve_model(base_model, self.models_dir)
            loaded = self._model(weights_dir if kind == "model" else base, tokenizer_source=base)
            if kind == "adapter":
                self._activate(loaded, weights_dir)
                context = nullcontext()
            else:
                context = loaded.model.disable_adapter() if loaded.adapters else nullcontext()
            max_positions = getattr(loaded.model.config, "max_position_embeddings", None)
            with context:
                yield ChatModel(loaded.model, loaded.tokenizer, max_positions)

    def _model(self, source: Path, *, tokenizer_source: Path) -> _Loaded:
        """The chat model in folder `source`, loaded now unless it is here already. The tokenizer is
        always the base model's: the one training used."""

        def load(device, dtype):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, device_map={"": device}, attn_implementation="sdpa"
            )
            return _Loaded(model.eval(), load_tokenizer(tokenizer_source))

        return self._cached(str(source.resolve()), source, load)

    def _cached(self, key: str, source: Path, load: Callable[[str, Any], _Loaded]) -> _Loaded:
        """The model cached under `key`, else `load(device, dtype)` it, making room first
        (least recently used out)."""
        loaded = self._loaded.get(key)
        if loaded is not None:
            self._loaded.move_to_end(key)
            return loaded
        while len(self._loaded) >= self.max_models:
            self._loaded.popitem(last=False)
            gc.collect()
            _empty_cuda_cache()
        try:
            loaded = load(*_device_and_dtype())
        except (OSError, ValueError) as error:
            raise InferenceError(
                f"the model in {source.name} cannot be loaded: {str(error).splitlines()[0]}"
            ) from error
        self._loaded[key] = loaded
        return loaded

    def _activate(self, loaded: _Loaded, folder: Path) -> None:
        from peft import PeftModel

        name = _adapter_name(folder)
        if name in loaded.adapters:
            loaded.adapters.move_to_end(name)
        elif not loaded.adapters:
            loaded.model = PeftModel.from_pretrained(loaded.model, folder, adapter_name=name).eval()
            loaded.adapters[name] = folder
        else:
            loaded.model.load_adapter(folder, adapter_name=name)
            loaded.adapters[name] = folder
        loaded.model.set_adapter(name)
        while len(loaded.adapters) > self.max_adapters:
            oldest, _folder = loaded.adapters.popitem(last=False)
            loaded.model.delete_adapter(oldest)


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _StopStrings:
    """The reply text, cut at the first stop string. Text that might be the start of a stop
    string is held back until the next pieces tell."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.text = ""
        self.released = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; returns the text now safe to show."""
        self.text += piece
        hits = [index for stop in self.stops if (index := self.text.find(stop, self.released)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        held = max((n for stop in self.stops for n in range(1, len(stop)) if self.text.endswith(stop[:n])), default=0)
        return self._release(len(self.text) - held)

    def finish(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        out, self.released = self.text[self.released : end], max(self.released, end)
        return out


def _stopping_flag(flag: threading.Event):
    from transformers import StoppingCriteria

    class StopWhenFlagged(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenFlagged()


def render_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The conversation as training renders it, followed by the start of the assistant's turn."""
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=tokenizer.chat_template or CHATML_TEMPLATE,
        add_generation_prompt=True,
        tokenize=False,
    )


def _prompt_ids(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def fit_messages(
    tokenizer, messages: Sequence[dict[str, str]], max_positions: int | None, answer_tokens: int
) -> tuple[list[dict[str, str]], list[int]]:
    """The conversation with its oldest turns left out until its prompt and `answer_tokens`
    fit in `max_positions`, and the prompt's token ids. System messages stay; whole turns go
    (from a user message up to the next), so what is kept still starts with the user; the
    last user message and what follows it always stay (when even they do not fit, the
    conversation is returned as short as it gets and the caller refuses it)."""
    kept = list(messages)
    ids = _prompt_ids(tokenizer, kept)
    if max_positions is None:
        return kept, ids
    while len(ids) + answer_tokens > max_positions:
        first = next((i for i, message in enumerate(kept) if message["role"] != "system"), None)
        last_user = max((i for i, message in enumerate(kept) if message["role"] == "user"), default=None)
        if first is None or last_user is None or first >= last_user:
            break  # only the last user turn is left
        end = next(i for i in range(first + 1, len(kept)) if kept[i]["role"] == "user")
        kept = kept[:first] + kept[end:]
        ids = _prompt_ids(tokenizer, kept)
    return kept, ids


def generate_chat(
    model: ChatModel,
    messages: Sequence[dict[str, str]],
    sampling: Sampling,
    on_text: Callable[[str], bool | None] | None = None,
    *,
    fit_context: bool = False,
) -> ChatReply:
    """Answer the conversation. `on_text` receives the answer piece by piece as it is
    generated (the pieces join to the reply's text); returning False stops generation.
    With `fit_context`, the oldest turns of a conversation too long for the model are left
    out (see `fit_messages`; the reply counts them) instead of the conversation being refused."""
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer, set_seed

    tokenizer = model.tokenizer
    device = next(model.model.parameters()).device
    if fit_context:
        # Room for the whole answer, but never more than half the context: a long max_tokens
        # must not push out all of the conversation.
        room_wanted = min(sampling.max_tokens, model.max_positions // 2) if model.max_positions else 0
        kept, ids = fit_messages(tokenizer, messages, model.max_positions, room_wanted)
    else:
        kept, ids = list(messages), _prompt_ids(tokenizer, messages)
    dropped = len(messages) - len(kept)
    inputs = {
        "input_ids": torch.tensor([ids], device=device),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=device),
    }
    prompt_tokens = len(ids)
    room = model.max_positions - prompt_tokens if model.max_positions else sampling.max_tokens
    if room < 1:
        raise InferenceError(
            f"the conversation is {prompt_tokens} tokens long; this model reads at most {model.max_positions}"
        )
    max_new_tokens = min(sampling.max_tokens, room)
    config = copy.deepcopy(model.model.generation_config)
    sample = sampling.temperature > 0
    config.update(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_p=sampling.top_p if sample else None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    eos_ids = set(_as_list(config.eos_token_id)) | set(_as_list(tokenizer.eos_token_id))
    config.eos_token_id = sorted(eos_ids) or None

    stop_now = threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.inference_mode():
                outcome["ids"] = model.model.generate(
                    **inputs,
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_stopping_flag(stop_now)]),
                )
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread below
            outcome["error"] = error
            streamer.end()

    if sampling.seed is not None:
        set_seed(sampling.seed)
    reply = _StopStrings(sampling.stop)
    show = on_text or (lambda _piece: None)
    abandoned = False
    thread = threading.Thread(target=run, name="tunelab-generate", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            shown = reply.feed(piece)
            abandoned = bool(shown) and show(shown) is False
            if abandoned or reply.stopped:
                break
    finally:
        stop_now.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if not (abandoned or reply.stopped) and (tail := reply.finish()):
        show(tail)
    new_ids = outcome["ids"][0, prompt_tokens:].tolist()
    ended = bool(new_ids) and new_ids[-1] in eos_ids
    finish_reason = "length" if not (reply.stopped or ended) and len(new_ids) >= max_new_tokens else "stop"
    return ChatReply(
        text=reply.text,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(new_ids),
        dropped_messages=dropped,
    )


def classify(model: ClassifierModel, text: str) -> ClassifierReply:
    """The probability of each label for `text` (the softmax of the classifier's logits). The
    text is read as training read it (with the tokenizer's special tokens); a text longer than
    the model reads is cut to fit, and the reply says so."""
    import torch

    if not text.strip():
        raise InferenceError("there is no text to classify")
    device = next(model.model.parameters()).device
    ids = model.tokenizer(text, add_special_tokens=True)["input_ids"]
    truncated = model.max_positions is not None and len(ids) > model.max_positions
    if truncated:
        ids = ids[: model.max_positions]
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    probabilities = torch.softmax(logits, dim=-1).tolist()
    return ClassifierReply(dict(zip(model.class_names, probabilities, strict=True)), len(ids), truncated)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
