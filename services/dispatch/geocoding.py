"""Address -> location, offline: the address's district by cnloc, then that district's centre.

Why cnloc (measured on 68 labelled addresses, README "Address -> location"): it knows districts
created up to 2024 (杭州临平区, 钱塘区), reads colloquial forms ("广东深圳南山科技园"), and leaves a
bare ambiguous name (朝阳区: Beijing or Changchun?) unplaced instead of guessing. It has no
coordinates: `data/district_centroids.csv` gives each 6-digit code's centre (data/README.md says
where it comes from). A district with no centre of its own (45 created lately) is placed at its
city's centre; an address with no city at all is not placed, and the caller falls back.

The parser takes about 2 s and 270 MB to load, so it loads once per process, on first use, off
the event loop (`ready()`); parsing is then about 0.05 ms an address.
"""

from __future__ import annotations

import asyncio
import csv
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CENTROIDS = Path(__file__).parent / "data" / "district_centroids.csv"
PARSER_YEAR = 2024  # the newest administrative map cnloc 0.1 ships


@dataclass(frozen=True)
class Located:
    latitude: float
    longitude: float
    source: str  # "district" or "city"
    district_code: str | None  # the 6-digit code found (district, else city)


class Geocoder:
    def __init__(self, centroids: Path = CENTROIDS) -> None:
        with centroids.open(encoding="utf-8", newline="") as file:
            self.centres = {row["adcode"]: (float(row["lat"]), float(row["lon"])) for row in csv.DictReader(file)}
        self._parser: Any = None
        self._lock = threading.Lock()

    async def ready(self) -> None:
        if self._parser is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        with self._lock:
            if self._parser is None:
                import cnloc

                parser = cnloc.AddressParser()  # a singleton: tests' in-process replicas share it
                # parse_single needs the year's automaton, which only the batch path builds.
                if PARSER_YEAR not in parser.year_automatons:
                    parser._build_automaton([PARSER_YEAR])
                self._parser = parser

    def locate(self, address: str) -> Located | None:
        """The address's district (or city) centre; None when no city can be told."""
        self._load()
        found = self._parser.parse_single(address, year=PARSER_YEAR, county_short=True)
        county, city = found.get("county_adcode"), found.get("city_adcode")
        if county and county in self.centres:
            lat, lon = self.centres[county]
            return Located(lat, lon, "district", county)
        if city and city in self.centres:
            lat, lon = self.centres[city]
            return Located(lat, lon, "city", county or city)
        return None
