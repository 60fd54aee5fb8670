"""Prompt following with CLIP: on hand-made features whose answer is known, ranks_first and
prompt_following give exactly the expected verdicts and shares (a tie is not first; cosine, not
dot product); the bootstrap interval of the mean is right, deterministic and narrows with more
images; on a tiny random CLIP scorer each verdict equals the one computed from its features."""

import numpy as np
import pytest
from PIL import Image

from clip_files import IMAGE_SIZE, write_tiny_clip
from clip_tokenizer_files import write_clip_tokenizer
from mlx_imgen.convert import converter
from mlx_imgen.scoring import CLIPScorer
from mlx_imgen.study.following import clip_score_interval, prompt_following, ranks_first
from mlx_imgen.study.suite import SuitePrompt, load_suite

# texts' features, by hand; the scorer below returns these (unnormalised: the ranking uses cosine)
TEXT = {"t1": [1, 0, 0], "d1a": [0, 1, 0], "d1b": [0, 0, 1],
        "t2": [0, 1, 0.2], "d2a": [0, 0, 4],
        "t3": [1, 1, 0], "d3a": [2, 2, 0], "d3b": [0, 0, 1],   # d3a: the same direction as t3
        "t4": [0, 0, 1], "d4a": [1, 0, 0], "d4b": [0, 1, 0], "d4c": [1, 1, 1]}
PROMPTS = [SuitePrompt("a", "colors", "t1", ("d1a", "d1b")),
           SuitePrompt("b", "colors", "t2", ("d2a", "t1")),      # "t1" again: encoded once
           SuitePrompt("c", "position", "t3", ("d3a", "d3b")),
           SuitePrompt("d", "position", "t4", ("d4a", "d4b", "d4c")),
           SuitePrompt("e", "custom", "t5")]                    # no distractors: not ranked
IMAGES = np.array([[3, 0.5, 0],     # nearest t1: first
                   [0, 0.3, 1],     # nearer d2a than t2: not first
                   [1, 1, 0.1],     # t3 and d3a tie: not first
                   [0.1, 0.2, 5],   # nearest t4: first
                   [1, 0, 0]])


class FeatureScorer:
    """A stand-in CLIPScorer with the hand-made text features, recording what it encodes."""

    def __init__(self):
        self.encoded = []

    def text_features(self, texts):
        self.encoded.append(list(texts))
        return np.array([TEXT[t] for t in texts], dtype=np.float32)

    def image_features(self, images):
        return np.asarray(images, dtype=np.float32)


def test_prompt_following_gives_the_known_verdicts_and_shares():
    scorer = FeatureScorer()
    result = prompt_following(scorer, IMAGES, PROMPTS)
    assert result["per_image"] == [True, False, False, True, None]
    assert result["by_category"] == {"colors": {"share": 0.5, "n": 2},
                                     "position": {"share": 0.5, "n": 2},
                                     "custom": {"share": None, "n": 0}}
    assert result["overall"] == {"share": 0.5, "n": 4}
    # one call, each distinct text once, the prompt without distractors not at all
    assert len(scorer.encoded) == 1 and sorted(scorer.encoded[0]) == sorted(set(TEXT) - {"t5"})
    # features computed already stand for the images
    again = prompt_following(FeatureScorer(), None, PROMPTS, image_features=IMAGES)
    assert again == result


def test_ranks_first_uses_cosine_and_counts_a_tie_as_not_first():
    image = np.array([[1.0, 0.1], [1.0, 1.0]])
    # the distractor [3, 1] has the larger dot product with image 0, the truth the larger cosine
    candidates = np.array([[[1.0, 0.0], [3.0, 1.0]],
                           [[1.0, 1.0], [5.0, 5.0]]])   # image 1: an exact tie
    assert ranks_first(image, candidates).tolist() == [True, False]
    with pytest.raises(ValueError, match="do not match"):
        ranks_first(image, candidates[:1])
    with pytest.raises(ValueError, match="at least one distractor"):
        ranks_first(image, candidates[:, :1])


def test_prompt_following_refuses_a_count_mismatch():
    with pytest.raises(ValueError, match="4 images and 5 prompts"):
        prompt_following(FeatureScorer(), IMAGES[:4], PROMPTS)


def test_the_bootstrap_interval_holds_the_mean_is_deterministic_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    few, many = rng.normal(25, 4, 30), rng.normal(25, 4, 3000)
    interval = clip_score_interval(few, seed=3)
    assert interval["n"] == 30 and interval["mean"] == pytest.approx(few.mean())
    assert interval["low"] < interval["mean"] < interval["high"]
    assert clip_score_interval(few, seed=3) == interval
    assert clip_score_interval(few, seed=4) != interval
    wide = interval["high"] - interval["low"]
    # the standard error falls as 1/sqrt(n): 10 times narrower for 100 times the images
    narrow = clip_score_interval(many, seed=3)
    assert narrow["high"] - narrow["low"] < wide / 5
    # about 1.96 standard errors either side of the mean at 95%
    assert wide == pytest.approx(2 * 1.96 * few.std() / np.sqrt(30), rel=0.25)
    assert clip_score_interval(few, level=0.5)["high"] < interval["high"]
    single = clip_score_interval([20.0])
    assert single == {"mean": 20.0, "low": 20.0, "high": 20.0, "n": 1}
    with pytest.raises(ValueError, match="no scores"):
        clip_score_interval([])


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    root = tmp_path_factory.mktemp("following")
    write_tiny_clip(root / "repo")
    write_clip_tokenizer(root / "repo", tokenizer_json=False)
    converter.convert(str(root / "repo"), root / "scorer", dtype="float32")
    return CLIPScorer.load(root / "scorer")


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    return [Image.fromarray(np.clip(np.stack([x, y, x * y], -1) * rng.uniform(0, 255, 3)
                                    + rng.normal(0, 30, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255)
                            .astype(np.uint8)) for _ in range(count)]


def test_on_a_tiny_clip_each_verdict_is_the_one_its_features_give(scorer):
    suite = load_suite()
    prompts = [next(p for p in suite if p.category == c) for c in
               ("colors", "counting", "position", "color_attribution", "long")]
    prompts.append(SuitePrompt("custom-001", "custom", "a fox in the snow"))
    images = _images(len(prompts))
    result = prompt_following(scorer, images, prompts)
    expected = []
    for image, prompt in zip(images, prompts):
        image_features = np.array(scorer.image_features([image]))[0]
        if not prompt.distractors:
            expected.append(None)
            continue
        cosine = np.array(scorer.text_features([prompt.text, *prompt.distractors])) @ image_features
        expected.append(bool(cosine[0] > cosine[1:].max()))
    assert result["per_image"] == expected
    assert result["overall"]["n"] == 5 and result["by_category"]["custom"] == {"share": None,
                                                                              "n": 0}
    # the features are unit vectors and give the CLIP score that score() gives
    features = np.array(scorer.image_features(images, batch_size=4))
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-5)
    texts = np.array(scorer.text_features([p.text for p in prompts]))
    np.testing.assert_allclose(100 * (features * texts).sum(1),
                               scorer.score(images, [p.text for p in prompts]).per_image,
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="text 2 is empty"):
        scorer.text_features(["a cat", " "])
