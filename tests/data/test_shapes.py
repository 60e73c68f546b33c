from collections import Counter

import numpy as np
import pytest

from alignfuse.data import ambiguity, load_shapes
from alignfuse.data.shapes import (
    COLORS,
    DK,
    FUNCTION_WORDS,
    SHAPES,
    TRAIN,
    scene_facts,
)
from alignfuse.encoders.tokenizer import split_words
from alignfuse.errors import DataError


def test_splits_sizes_and_captions(small_shapes):
    d = small_shapes
    assert [len(d[s]) for s in ("train", "val", "test", "test_dk")] == [64, 16, 120, 120]
    assert d["train"].images.shape[1:] == (64, 64, 3)
    assert all(len(c) == 5 for s in d.splits.values() for c in s.captions)
    assert d["test_dk"].images is d["test"].images


def test_scene_distribution():
    d = load_shapes(n_train=600, n_val=1, n_test=1, n_winoground=0, use_cache=False)
    scenes = d["train"].extras["scenes"]
    counts = Counter(len(s) for s in scenes)
    assert set(counts) == {1, 2, 3, 4}
    objs = [o for s in scenes for o in s]
    assert {o["shape"] for o in objs} == set(SHAPES) and len(SHAPES) >= 6
    assert {o["color"] for o in objs} == set(COLORS) and len(COLORS) == 8
    assert {o["size"] for o in objs} == {"small", "large"}
    for s in scenes:  # no overlap, inside the image
        for i, a in enumerate(s):
            assert a["r"] <= a["x"] <= 64 - a["r"] and a["r"] <= a["y"] <= 64 - a["r"]
            for b in s[i + 1 :]:
                assert np.hypot(a["x"] - b["x"], a["y"] - b["y"]) > a["r"] + b["r"]


def test_deterministic_and_independent_of_workers():
    a = load_shapes(
        n_train=300, n_val=8, n_test=8, n_winoground=4, seed=3, use_cache=False, workers=1
    )
    b = load_shapes(
        n_train=300, n_val=8, n_test=8, n_winoground=4, seed=3, use_cache=False, workers=2
    )
    c = load_shapes(
        n_train=300, n_val=8, n_test=8, n_winoground=4, seed=4, use_cache=False, workers=1
    )
    assert np.array_equal(a["train"].images, b["train"].images)
    assert a["train"].captions == b["train"].captions
    assert a.winoground.captions == b.winoground.captions
    assert not np.array_equal(a["train"].images, c["train"].images)


def test_every_caption_is_true_of_its_image(small_shapes):
    for name in ("train", "test", "test_dk"):
        split = small_shapes[name]
        for objs, facts in zip(split.extras["scenes"], split.extras["facts"], strict=True):
            true = scene_facts(objs)
            assert all(f in true for f in facts)


def test_caption_kinds_cover_attributes_relations_counts(small_shapes):
    kinds = Counter(f[0] for caps in small_shapes["test"].extras["facts"] for f in caps)
    assert set(kinds) == {"list", "rel", "count", "single", "colorcount"}


def test_pixels_show_the_described_colour(small_shapes):
    split = small_shapes["train"]
    for img, objs in zip(split.images, split.extras["scenes"], strict=True):
        for o in objs:
            if o["shape"] in ("circle", "square", "diamond"):  # solid at the centre
                px = img[int(o["y"]), int(o["x"])].astype(int)
                assert np.abs(px - np.array(COLORS[o["color"]])).max() < 40


def test_grounding_spans_name_their_objects(small_shapes):
    split = small_shapes["test"]
    for caps, spans, objs in zip(
        split.captions, split.extras["grounding"], split.extras["scenes"], strict=True
    ):
        for text, cap_spans in zip(caps, spans, strict=True):
            for start, end, idx in cap_spans:
                phrase = text[start:end]
                for i in idx:
                    assert (
                        TRAIN.colors[objs[i]["color"]] in phrase
                        or TRAIN.shapes[objs[i]["shape"]][0] in phrase
                        or TRAIN.shapes[objs[i]["shape"]][1] in phrase
                    )


def test_hard_negatives_are_false_minimal_edits(small_shapes):
    split = small_shapes["test"]
    negs = split.extras["negatives"]
    assert len(negs) == len(split)
    assert {n["kind"] for n in negs} >= {"attribute", "count"}
    for caps, neg in zip(split.captions, negs, strict=True):
        pos = caps[neg["positive"]]
        assert neg["caption"] != pos
        a, b = split_words(pos), split_words(neg["caption"])
        assert len(a) == len(b)
        assert sum(x != y for x, y in zip(a, b, strict=True)) <= 2  # one word (or its article)


def test_hard_negative_facts_are_false():
    from alignfuse.data.shapes import _hard_negative, _plans, _sample_scene, plan_fact

    rng = np.random.default_rng(0)
    for _ in range(300):
        objs = _sample_scene(rng, 64)
        neg = _hard_negative(rng, objs, _plans(rng, objs, 64))
        src = neg.get("edited", objs)
        assert plan_fact(neg["plan"], src) not in scene_facts(objs)


def test_winoground_groups_rearrange_the_same_words(small_shapes):
    w = small_shapes.winoground
    assert len(w) == 12 and w.images.shape == (12, 2, 64, 64, 3)
    for c0, c1 in w.captions:
        assert c0 != c1 and sorted(c0.split()) == sorted(c1.split())
    assert not np.array_equal(w.images[:, 0], w.images[:, 1])


def test_questions_have_true_answers(small_shapes):
    split = small_shapes["train"]
    for qa, objs in zip(split.extras["questions"], split.extras["scenes"], strict=True):
        for q, a in qa:
            if q.startswith("how many"):
                plural = q.split()[2]
                shape = next(s for s in SHAPES if TRAIN.shapes[s][1] == plural)
                assert int(a) == sum(o["shape"] == shape for o in objs)
            elif q.startswith("is there"):
                *_, color, shape = q[:-1].split()
                assert (a == "yes") == any(
                    o["color"] == color and o["shape"] == shape for o in objs
                )
            else:
                shape = q[:-1].split()[-1]
                assert [o["color"] for o in objs if o["shape"] == shape] == [a]


def test_test_dk_uses_no_training_word(small_shapes):
    train_vocab = {
        w for caps in small_shapes["train"].captions for c in caps for w in split_words(c)
    }
    # the whole lexicon, not just this sample: every word DK can produce
    dk_words = {
        w for caps in small_shapes["test_dk"].captions for c in caps for w in split_words(c)
    }
    lexicon_train = {
        w
        for t in (
            *TRAIN.colors.values(),
            *(s for pair in TRAIN.shapes.values() for s in pair),
            *TRAIN.sizes.values(),
            *TRAIN.relations.values(),
            *TRAIN.numbers.values(),
            *TRAIN.object_word,
            *TRAIN.list_templates,
            *TRAIN.rel_templates,
            *TRAIN.only_templates,
            *TRAIN.count_templates,
            *TRAIN.single_templates,
            *TRAIN.single_alone,
            *TRAIN.colorcount_templates,
        )
        for w in split_words(t.replace("{x}", "").replace("{n}", ""))
    }
    content = {w for w in dk_words - FUNCTION_WORDS if w.isalnum()}  # punctuation is shared
    assert not content & (train_vocab | lexicon_train), content & (train_vocab | lexicon_train)
    assert DK.colors["red"] == "crimson" and DK.shapes["circle"][0] == "disk"


def test_ambiguity_matches_brute_force(small_shapes):
    split = small_shapes["test"]
    amb = ambiguity(split)
    scenes, facts = split.extras["scenes"], split.extras["facts"]
    all_facts = [scene_facts(s) for s in scenes]
    ks = []
    for caps in facts:
        for f in caps:
            ks.append(sum(f in sf for sf in all_facts))
    assert amb["share_ambiguous"] == pytest.approx(np.mean(np.array(ks) > 1))
    assert amb["ceiling_r1_t2i"] == pytest.approx(np.mean(1 / np.array(ks)))
    i2t = []
    for i, sf in enumerate(all_facts):
        true_caps = [f for caps in facts for f in caps if f in sf]
        i2t.append(len(facts[i]) / len(true_caps))
    assert amb["ceiling_r1_i2t"] == pytest.approx(np.mean(i2t))
    assert 0 < amb["ceiling_r1_t2i"] < 1


def test_cache_reuses_and_repairs(tmp_path):
    kw = dict(n_train=20, n_val=4, n_test=4, n_winoground=2, cache_dir=str(tmp_path))
    a = load_shapes(**kw)
    folder = tmp_path / "shapes"
    (cache,) = list(folder.iterdir())
    assert (cache / "manifest.json").is_file()
    b = load_shapes(**kw)
    assert np.array_equal(a["train"].images, b["train"].images)
    with (cache / "images_train.npy").open("r+b") as f:  # corrupt one byte
        f.seek(-1, 2)
        f.write(b"\x07")
    with pytest.warns(UserWarning, match="corrupt"):
        c = load_shapes(**kw)
    assert np.array_equal(a["train"].images, c["train"].images)


@pytest.mark.parametrize("arg", ["n_train", "n_test", "image_size"])
def test_bad_sizes(arg):
    with pytest.raises(DataError, match=arg):
        load_shapes(**{arg: 0}, use_cache=False)
