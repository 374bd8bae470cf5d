"""The triage policy on known cases: each row states the facts and the expected decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from service.policy import (
    ClaimFacts,
    PhotoFacts,
    PolicyConfig,
    PriorityWeights,
    Triage,
    raised_for_photos,
    reasons_for_buyer,
    triage_claim,
)

NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
CARD_THRESHOLDS = SimpleNamespace(
    damage_high=0.8, damage_low=0.3, mismatch_high=0.8, mismatch_low=0.3
)
CONFIG = PolicyConfig().for_card(CARD_THRESHOLDS)
BLURRY = ("blurry", "warning")
DARK_BLOCKER = ("too_dark", "blocker")
LISTING_REUSE = ("listing_photo_reuse", "warning")


def photo(index: int, damage: float | None = 0.1, mismatch: float | None = None, *issues, dup=()):
    return PhotoFacts(
        index=index, damage=damage, mismatch=mismatch, issues=issues, duplicate_claims=dup
    )


def claim(reason: str, *photos: PhotoFacts, days_open: float = 1, **kwargs) -> ClaimFacts:
    return ClaimFacts(
        reason=reason, opened_at=NOW - timedelta(days=days_open), photos=photos, **kwargs
    )


def triage(facts: ClaimFacts, config: PolicyConfig = CONFIG) -> Triage:
    return triage_claim(facts, config=config, now=NOW)


@pytest.mark.parametrize(
    ("facts", "support", "sufficiency", "lane"),
    [
        # damaged / defective: support is the best usable photo's damage
        (claim("damaged", photo(1, 0.95)), 0.95, "ok", "fast_track"),
        (claim("defective", photo(1, 0.2), photo(2, 0.9)), 0.9, "ok", "fast_track"),
        (claim("damaged", photo(1, 0.5)), 0.5, "ok", "needs_review"),
        (claim("damaged", photo(1, 0.1)), 0.1, "ok", "needs_review"),
        # damage on a photo the model takes for another item: a human looks, no fast track
        (claim("damaged", photo(1, 0.95, 0.9)), 0.95, "ok", "needs_review"),
        (claim("damaged", photo(1, 0.95, 0.5)), 0.95, "ok", "fast_track"),
        (claim("damaged", photo(1, 0.95, 0.1), photo(2, 0.5, 0.99)), 0.95, "ok", "fast_track"),
        # a photo of some other item does not hold back what a photo of the listed one shows
        (claim("damaged", photo(1, 0.97, 0.9), photo(2, 0.94, 0.05)), 0.94, "ok", "fast_track"),
        # a blocked photo does not count, even with a high damage score
        (
            claim("damaged", photo(1, 0.99, None, DARK_BLOCKER), photo(2, 0.4)),
            0.4,
            "ok",
            "needs_review",
        ),
        # all photos with warnings: weak evidence; strong damage is still not a fast track
        (claim("damaged", photo(1, 0.95, None, BLURRY)), 0.95, "weak", "needs_review"),
        (claim("damaged", photo(1, 0.1, None, BLURRY)), 0.1, "weak", "needs_more_evidence"),
        # nothing usable
        (claim("damaged"), None, "insufficient", "needs_more_evidence"),
        (
            claim("damaged", photo(1, 0.9, None, DARK_BLOCKER)),
            None,
            "insufficient",
            "needs_more_evidence",
        ),
        (claim("damaged", photo(1, None)), None, "insufficient", "needs_more_evidence"),
        # wrong item / not as described: mismatch first, damage as secondary (noisy-or, weight .5)
        (claim("wrong_item", photo(1, 0.0, 0.9)), 0.9, "ok", "fast_track"),
        (claim("wrong_item", photo(1, 0.0, 0.2)), 0.2, "ok", "needs_review"),
        (claim("not_as_described", photo(1, 0.6, 0.5)), 1 - 0.5 * (1 - 0.3), "ok", "needs_review"),
        (claim("not_as_described", photo(1, 1.0, 0.7)), 1 - 0.3 * 0.5, "ok", "fast_track"),
        # listing without images: mismatch unknown, so is support
        (claim("wrong_item", photo(1, 0.9, None)), None, "ok", "needs_review"),
        # missing parts: evidence sufficiency only, always a human
        (claim("missing_parts", photo(1, 0.99), photo(2, 0.99)), None, "ok", "needs_review"),
        (claim("missing_parts", photo(1, 0.1)), None, "weak", "needs_review"),
        (claim("missing_parts"), None, "insufficient", "needs_more_evidence"),
        # no reason given (batch manifests): judged on the evidence alone, never fast-tracked
        (claim("", photo(1, 0.99, 0.99)), None, "ok", "needs_review"),
        (claim(""), None, "insufficient", "needs_more_evidence"),
        (claim("", photo(1, 0.5, dup=("c-3",))), None, "ok", "suspicious"),
        # reuse makes a claim suspicious whatever its scores
        (
            claim("damaged", photo(1, 0.99, None, LISTING_REUSE), photo(2, 0.99)),
            0.99,
            "ok",
            "suspicious",
        ),
        (claim("damaged", photo(1, 0.99, dup=("c-17",))), 0.99, "ok", "suspicious"),
        # ... even when the reused photo is blocked and nothing else is usable
        (
            claim("damaged", photo(1, 0.9, None, ("duplicate_across_claims", "blocker"))),
            None,
            "insufficient",
            "suspicious",
        ),
    ],
)
def test_known_cases(facts, support, sufficiency, lane):
    result = triage(facts)
    assert result.sufficiency == sufficiency
    assert result.lane == lane
    if support is None:
        assert result.support is None
    else:
        assert result.support == pytest.approx(support)
    assert 0 <= result.priority <= 100


@pytest.mark.parametrize(
    ("days_open", "expected_reason"),
    [
        (1, None),
        (10.5, "deadline in 4 days"),
        (13, "deadline in 2 days"),
        (14, "deadline in 1 day"),
        (14.9, "deadline in 3 hours"),
        (17, "deadline passed 2 days ago"),
    ],
)
def test_deadline_reasons(days_open, expected_reason):
    result = triage(claim("damaged", photo(1, 0.1), days_open=days_open))
    deadline_reasons = [reason for reason in result.reasons if reason.startswith("deadline")]
    assert deadline_reasons == ([expected_reason] if expected_reason else [])
    assert result.deadline == NOW - timedelta(days=days_open) + timedelta(days=15)


def test_priority_is_the_weighted_sum_of_its_parts():
    weights = PriorityWeights(
        deadline=40, escalated=20, support=30, suspicious=10, human_check=0, insufficient_evidence=0
    )
    config = CONFIG.model_copy(update={"weights": weights})
    # 12 of 15 days gone -> urgency 0.8 -> 32; escalated 20; damage 0.5 -> 15
    result = triage(claim("damaged", photo(1, 0.5), days_open=12, escalated=True), config)
    assert result.priority == 67
    assert result.reasons == ("deadline in 3 days", "escalated", "damage 0.50 on photo 1")


def test_reasons_name_the_photo_and_the_other_claim():
    facts = claim("damaged", photo(1, 0.2), photo(2, 0.93), photo(3, 0.1, dup=("CLM-9",)))
    result = triage(facts)
    assert "damage 0.93 on photo 2" in result.reasons
    assert "photo 3 reuses a photo from claim CLM-9" in result.reasons
    assert result.lane == "suspicious"


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (
            ["photo 3 reuses a photo from claim CLM-9"],
            ["photo 3 reuses a photo from another claim"],
        ),
        # Two claims behind one photo: one line for the buyer, nothing about how many.
        (
            ["photo 1 reuses a photo from claim A", "photo 1 reuses a photo from claim B"],
            ["photo 1 reuses a photo from another claim"],
        ),
        (
            ["damage 0.93 on photo 2", "photo 2 is the seller's listing photo", "escalated"],
            ["damage 0.93 on photo 2", "photo 2 is the seller's listing photo", "escalated"],
        ),
        ([], []),
        # How many photos raise the fast-track bar is for reviewers: told to a buyer, it says
        # that fewer photos clear it more easily.
        (
            ["damage 0.85 on photo 1", "fast track needs damage 0.89 with 4 photos"],
            ["damage 0.85 on photo 1"],
        ),
    ],
)
def test_buyers_read_reasons_without_other_claims_ids(stored, shown):
    assert reasons_for_buyer(stored) == shown


def test_the_buyers_reasons_match_what_triage_writes():
    facts = claim("damaged", photo(1, 0.2), photo(3, 0.1, dup=("CLM-9", "CLM-7")))
    written = triage(facts).reasons
    assert "photo 3 reuses a photo from claim CLM-9" in written
    shown = reasons_for_buyer(written)
    assert shown.count("photo 3 reuses a photo from another claim") == 1
    assert not any("CLM-" in reason for reason in shown)


def test_escalation_raises_priority_whichever_way_it_is_recorded():
    plain = triage(claim("damaged", photo(1, 0.5)))
    escalated = triage(claim("damaged", photo(1, 0.5), status="escalated"))
    assert escalated.priority == plain.priority + round(CONFIG.weights.escalated)
    assert "escalated" in escalated.reasons and "escalated" not in plain.reasons
    flagged = triage(claim("damaged", photo(1, 0.5), escalated=True))
    assert flagged.priority == escalated.priority


def test_older_claims_rank_higher_all_else_equal():
    priorities = [triage(claim("damaged", photo(1, 0.5), days_open=d)).priority for d in (1, 8, 14)]
    assert priorities == sorted(priorities) and priorities[0] < priorities[-1]


def test_priority_is_clamped_to_0_100():
    heavy = CONFIG.model_copy(update={"weights": PriorityWeights(deadline=90, escalated=90)})
    assert (
        triage(claim("damaged", photo(1, 1.0), days_open=30, escalated=True), heavy).priority == 100
    )
    light = CONFIG.model_copy(
        update={"weights": PriorityWeights(deadline=0, insufficient_evidence=-50)}
    )
    assert triage(claim("damaged"), light).priority == 0


def test_closed_claims_leave_the_queue():
    result = triage(claim("damaged", photo(1, 0.99), status="resolved", escalated=True))
    assert result.priority == 0
    assert result.reasons == ("claim is resolved",)


def test_deadline_days_come_from_configuration():
    config = CONFIG.model_copy(update={"deadline_days": 30})
    result = triage(claim("damaged", photo(1, 0.1), days_open=13), config)
    assert result.deadline == NOW + timedelta(days=17)
    assert not any(reason.startswith("deadline") for reason in result.reasons)


def test_thresholds_come_from_the_card_unless_pinned():
    pinned = PolicyConfig(damage_high=0.99).for_card(CARD_THRESHOLDS)
    assert (pinned.damage_high, pinned.damage_low) == (0.99, 0.3)
    assert triage(claim("damaged", photo(1, 0.95)), pinned).lane == "needs_review"
    with pytest.raises(ValueError, match="for_card"):
        triage(claim("damaged", photo(1, 0.95)), PolicyConfig())


def test_the_reasons_say_why_a_damage_claim_is_not_fast_tracked_or_not_supported():
    off_listing = triage(claim("damaged", photo(1, 0.95), photo(2, 0.97, 0.92)))
    assert "damage 0.95 on photo 1" in off_listing.reasons
    assert "photo 2 may not show the listed item (mismatch 0.92)" in off_listing.reasons
    alone = triage(claim("damaged", photo(1, 0.97, 0.92)))
    assert alone.lane == "needs_review" and "damage 0.97 on photo 1" in alone.reasons
    assert "no claim reason given: support not judged" in triage(claim("", photo(1))).reasons


@pytest.mark.parametrize(
    ("photos", "expected"),
    [
        ((photo(1, 0.9, None, DARK_BLOCKER),), "no usable photo: all 1 blocked by quality"),
        ((photo(1, None), photo(2, None)), "no usable photo: all 2 could not be scored"),
        (
            (photo(1, None), photo(2, 0.4, None, DARK_BLOCKER)),
            "no usable photo: 1 blocked by quality, 1 could not be scored",
        ),
        # A photo that could not be scored and has a blocker counts as blocked.
        ((photo(1, None, None, DARK_BLOCKER),), "no usable photo: all 1 blocked by quality"),
    ],
)
def test_an_insufficient_claim_says_why_no_photo_is_usable(photos, expected):
    """Files the batch job could not read are no quality problem of the buyer's photos."""
    result = triage(claim("damaged", *photos))
    assert result.sufficiency == "insufficient"
    assert expected in result.reasons


def test_wrong_item_support_is_the_mean_mismatch_of_the_claims_photos():
    """One photo the model takes for another item among photos of the listed item does not
    carry a wrong-item claim to the fast track: the mean counts, not the highest."""
    one_of_three = triage(
        claim("wrong_item", photo(1, 0.0, 0.95), photo(2, 0.0, 0.1), photo(3, 0.0, 0.1))
    )
    assert one_of_three.support == pytest.approx(0.3833, abs=1e-4)
    assert one_of_three.lane == "needs_review"
    assert "mismatch 0.38 over 3 photos (highest 0.95 on photo 1)" in one_of_three.reasons
    both = triage(claim("wrong_item", photo(1, 0.0, 0.9), photo(2, 0.0, 0.8)))
    assert both.support == pytest.approx(0.85)
    assert both.lane == "fast_track"
    alone = triage(claim("wrong_item", photo(1, 0.0, 0.9), photo(2, 0.0, None)))
    assert alone.support == pytest.approx(0.9)  # a photo without a listing to compare: left out
    assert "mismatch 0.90 on photo 1" in alone.reasons


@pytest.mark.parametrize(
    ("threshold", "photos", "expected"),
    [
        (0.8, 1, 0.8),
        (0.8, 0, 0.8),
        (0.8, 4, 8 / 9),
        (0.5, 4, 2 / 3),
        (0.5, 9, 0.75),
        # the ends of the scale stay where they are (1.0 pinned: no damage fast track at all)
        (1.0, 4, 1.0),
        (0.0, 4, 0.0),
    ],
)
def test_raised_for_photos_known_values(threshold, photos, expected):
    assert raised_for_photos(threshold, photos) == pytest.approx(expected)


def test_a_damage_claim_of_several_photos_needs_more_to_be_fast_tracked():
    """Each intact photo is another chance to reach the threshold by mistake: with two photos
    the fast track needs damage odds sqrt(2) times the card's (0.8 -> 0.85)."""
    assert triage(claim("damaged", photo(1, 0.84, 0.01))).lane == "fast_track"
    two = triage(claim("damaged", photo(1, 0.84, 0.01), photo(2, 0.1, 0.01)))
    assert two.lane == "needs_review"
    assert "damage 0.84 on photo 1" in two.reasons
    assert triage(claim("damaged", photo(1, 0.86, 0.01), photo(2, 0.1, 0.01))).lane == "fast_track"


@pytest.mark.parametrize(
    ("photos", "lane", "bar_reason"),
    [
        # damage 0.85 reaches the card's 0.8 but not the 0.89 of 4 photos: the reviewer is told
        (
            (photo(1, 0.85), photo(2, 0.1), photo(3, 0.1), photo(4, 0.1)),
            "needs_review",
            "fast track needs damage 0.89 with 4 photos",
        ),
        # blocked and off-listing photos are not among those the support is taken from
        (
            (photo(1, 0.84), photo(2, 0.1), photo(3, 0.9, None, DARK_BLOCKER), photo(4, 0.9, 0.9)),
            "needs_review",
            "fast track needs damage 0.85 with 2 photos",
        ),
        # below the card's own threshold, or fast-tracked: nothing to explain
        ((photo(1, 0.7), photo(2, 0.1)), "needs_review", None),
        ((photo(1, 0.95), photo(2, 0.1)), "fast_track", None),
        ((photo(1, 0.85),), "fast_track", None),
    ],
)
def test_the_reasons_say_when_several_photos_raised_the_fast_track_bar(photos, lane, bar_reason):
    """A reviewer who sees damage above the card's threshold and no fast track is told why."""
    result = triage(claim("damaged", *photos))
    assert result.lane == lane
    bar = [reason for reason in result.reasons if reason.startswith("fast track needs")]
    assert bar == ([bar_reason] if bar_reason else [])


def test_damage_high_pinned_to_one_is_triaged_with_several_photos():
    """1.0 is a valid pin (next to no damage claim fast-tracked); the raise must not divide by 0."""
    pinned = PolicyConfig(damage_high=1.0).for_card(CARD_THRESHOLDS)
    result = triage(claim("damaged", photo(1, 0.99), photo(2, 0.1)), pinned)
    assert (result.support, result.lane) == (0.99, "needs_review")


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown claim reason"):
        triage(claim("changed_my_mind", photo(1, 0.5)))


def test_policy_is_deterministic():
    facts = claim("wrong_item", photo(1, 0.4, 0.6), photo(2, 0.7, 0.1, BLURRY), days_open=11)
    assert triage(facts) == triage(facts)
