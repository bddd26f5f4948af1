from datetime import timedelta

import pytest

from tessera.api.quantities import (
    QuantityError,
    format_duration,
    format_mib,
    parse_duration,
    parse_memory_mib,
)


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("512Mi", 512),
        ("10Gi", 10240),
        ("10GiB", 10240),
        ("10gib", 10240),
        ("1.5Gi", 1536),
        ("1Ti", 1024 * 1024),
        ("2048Ki", 2),
        ("1Ki", 1),  # rounded up to whole MiB
        ("1G", 954),  # 10^9 bytes = 953.67 MiB, rounded up
        ("500M", 477),
        (" 4Gi ", 4096),
        (4096, 4096),
    ],
)
def test_memory_spellings(text: str | int, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("text", ["4", "4 GB of RAM", "Gi", "-4Gi", "4Pi", "", "4.Gi", "four Gi"])
def test_memory_refused_with_accepted_form(text: str) -> None:
    with pytest.raises(QuantityError, match="512Mi, 10Gi or 10GiB"):
        parse_memory_mib(text)


def test_negative_integer_memory_refused() -> None:
    with pytest.raises(QuantityError, match="negative"):
        parse_memory_mib(-1)


@pytest.mark.parametrize("mib", [512, 1024, 10240, 1024 * 1024, 1536])
def test_format_round_trips(mib: int) -> None:
    assert parse_memory_mib(format_mib(mib)) == mib


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("45", 45),
        ("1w", 604800),
        ("250ms", 0.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "h", "1h 30m", "-5s", "1.2.3s", "30mm"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(QuantityError, match="90s, 30m, 2h or 1d"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(seconds=5400)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"
