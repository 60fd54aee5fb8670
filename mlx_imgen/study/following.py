"""Prompt following measured with CLIP: the CLIP score's mean with a bootstrap interval, and the
share of images whose CLIP similarity ranks their own prompt above every minimally wrong caption
(the suite's distractors), per category and overall."""

from collections import defaultdict

import numpy as np

from .suite import SuitePrompt


def clip_score_interval(scores, *, resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> dict:
    """{"mean", "low", "high", "n"}: the mean of `scores` and the percentile bootstrap interval
    of that mean at `level`, the same for the same seed."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("no scores to take an interval of; score at least one image")
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    # draws in chunks: resamples x n indices at once would be large for a big suite
    means = []
    chunk = max(1, 1_000_000 // scores.size)
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, scores.size, (min(chunk, resamples - start), scores.size))
        means.append(scores[draws].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(scores.mean()), "low": float(low), "high": float(high),
            "n": int(scores.size)}


def ranks_first(image_features, candidate_features) -> np.ndarray:
    """For each image i (features (N, D)), whether its cosine with candidate 0 (the true
    caption) of candidate_features[i] ((N, 1 + K, D)) is above every other candidate's; a tie
    counts as not first: the image does not tell the captions apart."""
    image = np.asarray(image_features, dtype=np.float64)
    candidates = np.asarray(candidate_features, dtype=np.float64)
    if image.ndim != 2 or candidates.ndim != 3 or candidates.shape[0] != image.shape[0] \
            or candidates.shape[2] != image.shape[1]:
        raise ValueError(f"image features {image.shape} and candidate features "
                         f"{candidates.shape} do not match; pass (N, D) and (N, 1 + K, D)")
    if candidates.shape[1] < 2:
        raise ValueError("ranking needs the true caption and at least one distractor per image")
    image = image / np.linalg.norm(image, axis=-1, keepdims=True)
    candidates = candidates / np.linalg.norm(candidates, axis=-1, keepdims=True)
    cosine = np.einsum("nd,nkd->nk", image, candidates)
    return cosine[:, 0] > cosine[:, 1:].max(axis=1)


def _share(hits: list[bool]) -> dict:
    return {"share": float(np.mean(hits)) if hits else None, "n": len(hits)}


def prompt_following(scorer, images: list | None, prompts: list[SuitePrompt], *,
                     image_features=None) -> dict:
    """Whether each image's CLIP similarity ranks its prompt above the prompt's distractors:
    {"per_image": [bool, or None for a prompt without distractors], "by_category": {category:
    {"share", "n"}}, "overall": {"share", "n"}} (share None where n is 0). Every distinct text
    is encoded once; `image_features` (N, D), already computed by `scorer`, stand for the
    images."""
    if image_features is None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images and {len(prompts)} prompts: give one "
                             "prompt for every image")
        image_features = scorer.image_features(images)
    image_features = np.asarray(image_features, dtype=np.float64)
    if len(image_features) != len(prompts):
        raise ValueError(f"{len(image_features)} image features and {len(prompts)} prompts: "
                         "give one prompt for every image")
    ranked = [i for i, p in enumerate(prompts) if p.distractors]
    texts = list(dict.fromkeys(t for i in ranked for t in (prompts[i].text,
                                                            *prompts[i].distractors)))
    per_image: list[bool | None] = [None] * len(prompts)
    if texts:
        text_features = np.asarray(scorer.text_features(texts), dtype=np.float64)
        row = {text: r for r, text in enumerate(texts)}
        # prompts with the same number of distractors rank together
        by_width = defaultdict(list)
        for i in ranked:
            by_width[len(prompts[i].distractors)].append(i)
        for members in by_width.values():
            rows = [[row[t] for t in (prompts[i].text, *prompts[i].distractors)]
                    for i in members]
            for i, first in zip(members, ranks_first(image_features[members],
                                                     text_features[np.array(rows)])):
                per_image[i] = bool(first)
    by_category = defaultdict(list)
    for prompt, first in zip(prompts, per_image):
        hits = by_category[prompt.category]
        if first is not None:
            hits.append(first)
    return {"per_image": per_image,
            "by_category": {category: _share(hits) for category, hits in by_category.items()},
            "overall": _share([first for first in per_image if first is not None])}
