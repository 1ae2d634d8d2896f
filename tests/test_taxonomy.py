import pytest

from foundir_data import taxonomy


def test_twenty_types_seven_isolated():
    assert len(taxonomy.TYPES) == 20
    assert taxonomy.ISOLATED == ("Blur", "Noise", "JPEG", "Haze", "Rain", "Raindrop", "Lowlight")
    assert len(taxonomy.COUPLED) == 13
    # Release test ids are contiguous 1..1500.
    ranges = [t.test_ids for t in taxonomy.TYPES]
    assert ranges[0][0] == 1 and ranges[-1][1] == 1500
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    assert sum(b - a + 1 for a, b in ranges) == 1500


@pytest.mark.parametrize("token,name", [
    ("01Blur", "Blur"), ("12NightRain", "NightRain"), ("18Lowlight_Blur_Noise", "Lowlight_Blur_Noise"),
    ("04Blur_Noise_JPEG", "Blur_Noise_JPEG"), ("noise+blur", "Blur_Noise"), ("Lowlight-Rain", "NightRain"),
    ("09Lowlight_Haze", "Lowlight_Haze"),
])
def test_parse_release_tokens(token, name):
    assert taxonomy.parse_token(token).name == name


def test_folder_roundtrip_and_flags():
    for t in taxonomy.TYPES:
        assert taxonomy.parse_token(t.folder) is t
        assert sum(t.flags().values()) == len(t.components)
        assert t.cls == ("isolated" if len(t.components) == 1 else "coupled")
    assert taxonomy.get("NightRain").flags()["lowlight"] and taxonomy.get("NightRain").flags()["rain"]


def test_unknown_token_is_clear_error_unless_mapped():
    with pytest.raises(taxonomy.UnknownDegradationError, match="Snow"):
        taxonomy.parse_token("21Snow")
    assert taxonomy.parse_token("21Snow", mapping={"Snow": "Rain"}).name == "Rain"
    with pytest.raises(taxonomy.UnknownDegradationError, match="not one of the"):
        taxonomy.parse_token("Haze_Raindrop")


def test_select_and_test_ids():
    assert [t.name for t in taxonomy.select("isolated")] == list(taxonomy.ISOLATED)
    assert len(taxonomy.select(["all", "Blur"])) == 20
    assert taxonomy.from_test_id(1001).name == "NightRain"
    with pytest.raises(taxonomy.UnknownDegradationError):
        taxonomy.from_test_id(1501)
