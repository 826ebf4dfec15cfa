"""Chat with a base model or a fine-tuned one: the tokenizer's chat template, sampling, the
text streamed as it is generated, token counts.

    models = ModelCache(models_dir=Path("/models"))
    with models.use("tiny-llama", weights_dir=Path("runs/42/final")) as model:
        reply = generate_chat(model, [{"role": "user", "content": "Hi"}], Sampling(max_tokens=64),
                              on_text=lambda piece: print(piece, end=""))

A fine-tuned model is its base model plus the job's weights: a PEFT adapter is loaded onto
the cached base (each base is loaded once, whatever the number of adapters used on it, and
the plain base answers with the adapters switched off); full fine-tuned weights are a model
of their own. Conversations are rendered exactly as training rendered them (the tokenizer's
template, ChatML when it has none), so a fine-tuned model sees what it learned from.
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
from .loading import load_tokenizer, read_class_names, resolve_model


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str  # "stop": the model ended its turn or met a stop string; "length": max_tokens ran out
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ChatModel:
    """A loaded model ready to answer, with the adapter asked for active (or none)."""

    model: Any
    tokenizer: Any
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
        """The model in folder `source`, loaded now unless it is here already. The tokenizer is
        always the base model's: the one training used."""
        key = str(source.resolve())
        loaded = self._loaded.get(key)
        if loaded is not None:
            self._loaded.move_to_end(key)
            return loaded
        while len(self._loaded) >= self.max_models:
            self._loaded.popitem(last=False)
            gc.collect()
            _empty_cuda_cache()
        from transformers import AutoModelForCausalLM

        device, dtype = _device_and_dtype()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, device_map={"": device}, attn_implementation="sdpa"
            )
        except (OSError, ValueError) as error:
            raise InferenceError(
                f"the model in {source.name} cannot be loaded: {str(error).splitlines()[0]}"
            ) from error
        loaded = self._loaded[key] = _Loaded(model.eval(), load_tokenizer(tokenizer_source))
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


def generate_chat(
    model: ChatModel,
    messages: Sequence[dict[str, str]],
    sampling: Sampling,
    on_text: Callable[[str], bool | None] | None = None,
) -> ChatReply:
    """Answer the conversation. `on_text` receives the answer piece by piece as it is
    generated (the pieces join to the reply's text); returning False stops generation."""
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer, set_seed

    tokenizer = model.tokenizer
    device = next(model.model.parameters()).device
    inputs = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt").to(device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
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
        text=reply.text, finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=len(new_ids)
    )


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
