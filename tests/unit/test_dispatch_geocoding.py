"""Address -> location on the labelled addresses of tests/data/dispatch_addresses.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from services.dispatch.geocoding import Geocoder

pytestmark = pytest.mark.timeout(60)

ADDRESSES = json.loads((Path(__file__).parents[1] / "data" / "dispatch_addresses.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def geocoder() -> Geocoder:
    return Geocoder()


def placed_right(geocoder: Geocoder, labelled: dict[str, object]) -> bool:
    found = geocoder.locate(str(labelled["addr"]))
    if labelled["district"]:
        return found is not None and found.district_code == labelled["district"]
    if labelled["city"] and found is not None:  # no district in the address: its city will do
        return found.district_code == labelled["city"]
    return found is None


def test_full_colloquial_and_garbage_addresses_are_all_placed_right(geocoder: Geocoder) -> None:
    wrong = [
        a["addr"] for a in ADDRESSES if a["cat"] in ("full", "colloquial", "garbage") and not placed_right(geocoder, a)
    ]
    assert wrong == []


def test_districts_created_since_2016_are_mostly_known(geocoder: Geocoder) -> None:
    new = [a for a in ADDRESSES if a["cat"] == "new"]
    right = sum(placed_right(geocoder, a) for a in new)
    # The four misses are names abolished in mergers (杭州下城区, 江干区, 三明梅列区, 广州萝岗区): placed
    # at their city's centre, not lost.
    assert right >= 15, f"{right} of {len(new)}"
    for missed in (a for a in new if not placed_right(geocoder, a)):
        found = geocoder.locate(missed["addr"])
        assert found is not None and found.source == "city" and found.district_code == missed["city"]


def test_a_bare_ambiguous_district_name_is_not_guessed(geocoder: Geocoder) -> None:
    assert geocoder.locate("朝阳区") is None  # Beijing's or Changchun's: the fallback branch, flagged
    outcomes = Counter(placed_right(geocoder, a) for a in ADDRESSES if a["cat"] == "ambiguous")
    # Known: "鼓楼区中山路" reads 中山 (a city) from the street name, "普陀区长寿路" reads 长寿 (a
    # Chongqing district): 2 of 8.
    assert outcomes[True] >= 6


def test_every_current_district_has_a_centre_or_its_citys(geocoder: Geocoder) -> None:
    located = geocoder.locate("浙江省杭州市钱塘区下沙街道")  # created 2021, no centre of its own
    assert located is not None and located.source == "city" and located.district_code == "330114"
    assert geocoder.centres["330100"] == (located.latitude, located.longitude)
    beijing = geocoder.locate("北京市朝阳区建国路88号")
    assert beijing is not None and beijing.district_code == "110105" and beijing.source == "district"
