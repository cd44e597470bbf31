"""The shipped champion reads adverse company news as bearish (issue #13).

Tweets taught the first models that "bearish" means price-down language, so coverage of a
company's collapse read as neutral. These headlines are invented for this test (none is in
the training data, none is a publisher's) and follow ``training/LABEL_GUIDELINE.md``: adverse
for an investor in the company the headline is about. They use no price words.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.inference import Classifier
from pipeline.settings import load_settings

SHIPPED = Path(__file__).resolve().parents[2] / "finsent" / "model"

ADVERSE = [
    "Budget airline Skyvale ceases trading, leaving 40,000 passengers stuck overseas",
    "Tour firm Meridian Holidays files for creditor protection in France",
    "Football fans face ruined trips after travel group's sudden failure",
    "Lawmakers demand inquiry into conduct of collapsed builder's board",
    "Auditor quits Northbank Retail citing concerns over missing accounts",
    "Thousands of workers unpaid as contractor Granthold calls in administrators",
    "Carmaker Velto recalls 300,000 vehicles over brake fault",
    "Regulator fines Harlow Energy for misleading customers on bills",
    "Pilots at Coastjet vote to strike through the summer",
    "Payment outage leaves Brightpay customers unable to buy food",
    "Insurer Calloway cuts 2,500 jobs and shuts regional offices",
    "Police raid offices of fintech Zenlend over suspected fraud",
]
FAVOURABLE = [
    "Rescue deal saves 3,000 jobs at struggling shoe chain",
    "Unemployment falls to its lowest level in half a century",
    "Airline's losses narrower than feared as bookings recover",
]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load(SHIPPED, load_settings(ort_providers=("CPUExecutionProvider",)))


def test_adverse_company_news_without_price_words_reads_bearish(classifier: Classifier) -> None:
    predictions = classifier.classify(ADVERSE)
    bearish = [p.sentiment == "bearish" for p in predictions]
    # 12 of 12 would be luck on unseen text; v2.1 (tweets only) got 6 of 12
    assert sum(bearish) >= 10, [
        (h, p.sentiment, round(p.p_bearish, 2)) for h, p in zip(ADVERSE, predictions, strict=True)
    ]


def test_better_than_feared_and_falling_unemployment_are_mostly_not_bearish(
    classifier: Classifier,
) -> None:
    # v3 still reads "unemployment falls ..." as bearish (p 0.52, a known miss: "falls" is
    # price-down language in the tweets); v2.1 read two of the three as bearish
    predictions = classifier.classify(FAVOURABLE)
    assert sum(p.sentiment == "bearish" for p in predictions) <= 1, [
        (h, p.sentiment, round(p.p_bearish, 2))
        for h, p in zip(FAVOURABLE, predictions, strict=True)
    ]
