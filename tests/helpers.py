"""Helpers shared by the test modules (imported as ``helpers``: ``tests/`` is on the path)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse.config import load_config
from alignfuse.engine import Trainer, load_data
from alignfuse.engine.evaluate import images_to_tensor


def quiet_trainer(folder: Path, overrides: list[str], name: str) -> Trainer:
    """A Trainer of the default config with ``overrides`` and ``name=``, in
    ``folder / name``, without progress bars or log lines."""
    cfg = load_config(None, [*overrides, f"name={name}"])
    return Trainer(cfg, load_data(cfg), folder / name, progress=False, log=lambda m: None)


def assert_resumes_exactly(
    full: Trainer, make_part: Callable[[], Trainer], stop_after: int = 7
) -> Trainer:
    """Train a fresh ``make_part()`` for ``stop_after`` steps (as if killed after a
    checkpoint), rebuild it, resume, and assert its weights equal those of ``full`` (trained
    in one go); the resumed trainer is returned."""
    make_part().fit(stop_after=stop_after)
    part = make_part()
    part.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, part.model.state_dict()[k]), k
    return part


def two_stage_winoground_loop(
    model: Any, wino: Any, first_stage: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> np.ndarray:
    """Winoground scores ``(groups, 2, 2)`` of a two-stage model, one pair at a time: its
    ``match_scores`` on the pair plus ``first_stage(image embedding, caption embedding)``."""
    scores = np.zeros((len(wino), 2, 2))
    with torch.no_grad():
        for g in range(len(wino)):
            img, feats = model.image_features(images_to_tensor(wino.images[g]))
            txt, tokens, mask = model.text_features(model.prepare_text(list(wino.captions[g])))
            for c in range(2):
                for i in range(2):
                    m = model.match_scores(feats[i : i + 1], tokens[c : c + 1], mask[c : c + 1])
                    scores[g, c, i] = float(m) + float(first_stage(img[i], txt[c]))
    return scores


# a toy Spider schema (tables.json entry) and its item indices
PETS = {
    "db_id": "pets",
    "table_names": ["student", "pet", "has pet"],
    "table_names_original": ["Student", "Pet", "Has_Pet"],
    "column_names": [
        [-1, "*"],
        [0, "student id"],
        [0, "name"],
        [0, "age"],
        [1, "pet id"],
        [1, "owner id"],
        [1, "pet age"],
        [2, "student id"],
        [2, "pet id"],
    ],
    "column_names_original": [
        [-1, "*"],
        [0, "StuID"],
        [0, "Name"],
        [0, "Age"],
        [1, "PetID"],
        [1, "OwnerID"],
        [1, "pet_age"],
        [2, "StuID"],
        [2, "PetID"],
    ],
    "column_types": [
        "text",
        "number",
        "text",
        "number",
        "number",
        "number",
        "number",
        "number",
        "number",
    ],
    "primary_keys": [1, 4],
    "foreign_keys": [[5, 1], [7, 1], [8, 4]],
}
STUDENT, PET, HAS_PET = 0, 1, 2
S_ID, S_NAME, S_AGE, P_ID, P_OWNER, P_AGE, H_STU, H_PET = range(8)


HF_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "red",
    "blue",
    "circle",
    "square",
    "drawing",
    "of",
    "two",
    "green",
    "stars",
]


def _hf_towers(kind: str) -> dict[str, Any]:
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(vocab_size=len(HF_WORDS), max_position_embeddings=16, **tower)
    if kind == "clip":
        text["eos_token_id"] = 3  # [SEP] ends the text: CLIP pools there
    return {"text_config": text, "vision_config": dict(image_size=30, patch_size=6, **tower)}


def save_tiny_hf(folder: Path, kind: str) -> Path:
    """A tiny random CLIP (``kind="clip"``) or SigLIP checkpoint with its tokenizer and
    image processor, saved into ``folder`` as transformers saves one."""
    import transformers as tf

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(projection_dim=16, **_hf_towers(kind)))
        proc = tf.CLIPImageProcessorPil(
            size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
        )
    else:
        model = tf.SiglipModel(tf.SiglipConfig(**_hf_towers(kind)))
        proc = tf.SiglipImageProcessorPil(size={"height": 30, "width": 30})
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(HF_WORDS))
    tf.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


QUESTIONS = [
    ("How many pets are there?", "SELECT count(*) FROM pet"),
    ("List the names of all students.", "SELECT name FROM student"),
    ("What is the age of the oldest student?", "SELECT max(age) FROM student"),
    (
        "Which students own a pet?",
        "SELECT T1.name FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid",
    ),
    ("How old are the pets?", "SELECT pet_age FROM pet"),
    ("Show the ids of students older than 20.", "SELECT stuid FROM student WHERE age > 20"),
]


def write_spider_folder(tmp_path: Path) -> Path:
    """A Spider-format folder: two databases (one held out for validation), dev, syn, dk."""
    other = json.loads(json.dumps(PETS))
    other["db_id"] = "pets_2"
    for name, sub in (("spider-syn", [PETS, other]), ("spider-dk", [PETS])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tables.json").write_text(json.dumps(sub))
    train = [
        {"db_id": db, "SpiderQuestion": q, "SpiderSynQuestion": q, "query": s}
        for db in ("pets", "pets_2")
        for q, s in QUESTIONS
    ]
    dev = [
        {
            "db_id": "pets",
            "SpiderQuestion": q,
            "SpiderSynQuestion": q.replace("pet", "animal"),
            "query": s,
        }
        for q, s in QUESTIONS
    ]
    dk = [
        {"db_id": "pets", "question": q, "query": s, "type": i % 3}
        for i, (q, s) in enumerate(QUESTIONS)
    ]
    (tmp_path / "spider-syn" / "train_spider.json").write_text(json.dumps(train))
    (tmp_path / "spider-syn" / "dev.json").write_text(json.dumps(dev))
    (tmp_path / "spider-dk" / "Spider-DK.json").write_text(json.dumps(dk))
    return tmp_path
