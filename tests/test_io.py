"""cryoseg.io, cryoseg.coords, cryoseg.particles and cryoseg.fetch: bad input, exact round trips and fuzzing
(hypothesis), downloads against a local server.

Fast and offline: every HTTP request goes to `cryoseg.testing.serve_folder` on 127.0.0.1.
"""
import hashlib
import socket
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cryoseg.coords import (
    read_box, read_cryoppp_csv, read_particles, read_star, read_topaz, strip_uid, write_box, write_cryoppp_csv,
    write_particles, write_star, write_topaz,
)
from cryoseg.fetch import download
from cryoseg.io import atomic_path, read_mask, read_micrograph, write_mask, write_micrograph
from cryoseg.particles import PARTICLE_COLUMNS, check_coordinates, flip_y, make_particles
from cryoseg.testing import serve_folder

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAR_ERRORS = (ValueError, FileNotFoundError)


def assert_valid_table(df):
    "What any reader returns: the contract's columns, finite float centres, string names."
    assert isinstance(df, pd.DataFrame)
    assert tuple(df.columns[:5]) == PARTICLE_COLUMNS
    for c in ("x", "y", "score", "diameter_px"):
        assert df[c].dtype == np.float64
    assert np.isfinite(df[["x", "y"]].to_numpy()).all()
    assert all(isinstance(m, str) for m in df["micrograph"])


# ---------------------------------------------------------------- conventions

def read_or_clear_error(reader, f):
    "`reader(f)`, or None when it raised one of CLEAR_ERRORS naming the file; any other exception fails the test."
    try:
        return reader(f)
    except CLEAR_ERRORS as e:
        assert f.name in str(e)
        return None


def test_pixel_centre_convention(tmp_path):
    "Pixel [r, c] has centre (x=c, y=r); MRC row 0 is the first stored row; flip_y maps row r to H-1-r."
    img = np.zeros((5, 7), np.float32)
    img[1, 4] = 1.0                       # row 1, column 4
    write_micrograph(tmp_path / "a.mrc", img)
    back, _ = read_micrograph(tmp_path / "a.mrc", check=False)
    r, c = np.unravel_index(np.argmax(back), back.shape)
    p = make_particles([c], [r])
    assert (p.x[0], p.y[0]) == (4.0, 1.0)
    with mrcfile.open(tmp_path / "a.mrc") as m:   # the first row of the data block is row 0
        assert m.data[1, 4] == 1.0 and m.header.nx == 7 and m.header.ny == 5
    f = flip_y(p, 5)
    assert f.y[0] == 3.0 and img[::-1][int(f.y[0]), int(f.x[0])] == 1.0


def test_box_corner_convention(tmp_path):
    p = make_particles([100.0], [200.0])
    write_box(tmp_path / "a.box", p, box_size_px=50)
    assert (tmp_path / "a.box").read_text().split() == ["75", "175", "50", "50"]


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_cleans_up_and_refuses_overwrite(tmp_path):
    target = tmp_path / "sub" / "f.mrc"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as t:
            t.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []
    with atomic_path(target) as t:
        assert t.parent == target.parent and t.name.startswith(".f.mrc.") and t.suffix == ".tmp"
        t.write_bytes(b"ok")
    with pytest.raises(FileExistsError, match="f.mrc: file exists"):
        with atomic_path(target) as t:
            pass
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic_path(tmp_path / "never.txt") as t:
            pass


@pytest.mark.parametrize("write", [
    lambda p: write_micrograph(p.with_suffix(".mrc"), np.eye(4)),
    lambda p: write_micrograph(p.with_suffix(".png"), np.eye(4)),
    lambda p: write_mask(p.with_suffix(".mrc"), np.eye(4, dtype=np.uint8)),
    lambda p: write_particles(p.with_suffix(".star"), make_particles([1.0], [1.0])),
    lambda p: write_particles(p.with_suffix(".box"), make_particles([1.0], [1.0]), box_size_px=4),
    lambda p: write_particles(p.with_suffix(".csv"), make_particles([1.0], [1.0])),
    lambda p: write_particles(p.with_suffix(".txt"), make_particles([1.0], [1.0])),
])
def test_writers_refuse_to_overwrite(tmp_path, write):
    f = write(tmp_path / "f")
    before = f.read_bytes()
    with pytest.raises(FileExistsError, match=f"{f.name}: file exists"):
        write(tmp_path / "f")
    assert f.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [f.name]   # no temporary file left


# ---------------------------------------------------------------- micrographs: bad input

@pytest.fixture
def mrc(tmp_path):
    img = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
    return write_micrograph(tmp_path / "m.mrc", img, pixel_size_a=0.885), img


def test_micrograph_round_trip(mrc):
    path, img = mrc
    back, pix = read_micrograph(path)
    np.testing.assert_array_equal(back, img)
    assert pix == 0.885


def test_missing_file(tmp_path):
    for f in (read_micrograph, read_mask, read_particles):
        with pytest.raises(FileNotFoundError, match="nope.mrc: no such file" if f is not read_particles else "nope.star"):
            f(tmp_path / ("nope.mrc" if f is not read_particles else "nope.star"))


@pytest.mark.parametrize("cut", [0, 100, 1023, 1024 + 10])
def test_truncated_mrc(mrc, tmp_path, cut):
    path, _ = mrc
    bad = tmp_path / "t.mrc"
    bad.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match="t.mrc: not a readable MRC file"):
        read_micrograph(bad)


def test_3d_stack_nan_inf_constant(tmp_path):
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"s.mrcs: expected a 2D micrograph .* got shape \(2, 4, 4\)"):
        read_micrograph(tmp_path / "s.mrcs")
    for bad, what in ((np.inf, "NaN/Inf"), (np.nan, "NaN/Inf")):
        a = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
        a[2, 1] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.new(tmp_path / "n.mrc", overwrite=True) as m:
                m.set_data(a)
        with pytest.raises(ValueError, match=f"n.mrc: 1 {what} pixels \\(first at row 2, col 1\\)"):
            read_micrograph(tmp_path / "n.mrc")
    write_micrograph(tmp_path / "c.png", np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="c.png: constant image"):
        read_micrograph(tmp_path / "c.png")


def test_unknown_extensions(tmp_path):
    (tmp_path / "a.dm4").write_bytes(b"x")
    with pytest.raises(ValueError, match="a.dm4: unknown micrograph extension"):
        read_micrograph(tmp_path / "a.dm4")
    with pytest.raises(ValueError, match="unknown micrograph extension"):
        write_micrograph(tmp_path / "a.dm4", np.eye(3))
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="a.xml: unknown coordinate file extension"):
        read_particles(tmp_path / "a.xml")
    with pytest.raises(ValueError, match="masks are written as MRC"):
        write_mask(tmp_path / "m.png", np.eye(3, dtype=np.uint8))


def test_mask_values(tmp_path):
    with mrcfile.new(tmp_path / "m.mrc") as m:
        m.set_data(np.array([[0, 1], [2, 1]], np.int16))
    with pytest.raises(ValueError, match=r"m.mrc: a 0/1 mask holds other values \[2\]"):
        read_mask(tmp_path / "m.mrc")
    assert read_mask(tmp_path / "m.mrc", instance=True).tolist() == [[0, 1], [2, 1]]
    with mrcfile.new(tmp_path / "f.mrc") as m:
        m.set_data(np.array([[0, 0.5]], np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        read_mask(tmp_path / "f.mrc")


@given(st.lists(st.integers(0, 65535), min_size=1, max_size=30))
@settings(max_examples=25, deadline=None)
def test_instance_map_round_trip(ids):
    import tempfile
    inst = np.array(ids, np.int32).reshape(1, -1)
    with tempfile.TemporaryDirectory() as d:
        write_mask(Path(d) / "i.mrc", inst)
        back = read_mask(Path(d) / "i.mrc", instance=True)
    assert back.dtype == np.int32 and np.array_equal(back, inst)


# ---------------------------------------------------------------- coordinates: bad input

def test_empty_coordinate_files(tmp_path):
    for name in ("e.star", "e.box", "e.csv", "e.txt"):
        (tmp_path / name).write_text("  \n")
        with pytest.raises(ValueError, match=f"{name}: empty file"):
            read_particles(tmp_path / name)
    (tmp_path / "h.txt").write_text("image_name\tx_coord\ty_coord\tscore\n")
    with pytest.raises(ValueError, match="h.txt: no particles in file"):
        read_particles(tmp_path / "h.txt")
    assert len(read_particles(tmp_path / "h.txt", allow_empty=True)) == 0
    (tmp_path / "h.star").write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n")
    with pytest.raises(ValueError, match="h.star: no particles"):
        read_particles(tmp_path / "h.star")


@pytest.mark.parametrize("name,text,msg", [
    ("a.csv", "X-Coordinate,Diameter\n1,2\n", r"missing required column\(s\) \['Y-Coordinate'\]"),
    ("a.txt", "image_name\tx_coord\n1\t2\n", r"missing required column\(s\) \['y_coord'\]"),
    ("a.star", "data_\nloop_\n_rlnCoordinateX #1\n1.0\n", "no rlnCoordinateY"),
    ("a.star", "data_\nloop_\n_rlnAnglePsi #1\n1.0\n", "no table with rlnCoordinateX"),
    ("a.star", "just some text\n", "expected 'data_'"),
    ("a.star", "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\nnan 1\n", "non-finite particle coordinates"),
    ("a.box", "1 2 x 4\n", "'x' is not a number"),
    ("a.box", "1 2 0 0\n", "box size must be positive"),
    ("a.box", "1 2 10 12\n", "non-square box"),
    ("a.box", "1 2 10 10\n3 4 10 10\n5 6 12 12\n", r"mixed box sizes \[10.0, 12.0\] \(line 3\)"),
    ("a.csv", "X-Coordinate,Y-Coordinate\n1,2,3\n", "row 2: 3 values for 2 columns"),
    ("a.txt", "image_name\tx_coord\ty_coord\nm\t1\n", "line 2: 2 tab-separated values for 3 columns"),
    ("a.txt", "image_name\tx_coord\ty_coord\nm\tinf\t1\n", "non-finite particle coordinates"),
])
def test_bad_coordinate_files(tmp_path, name, text, msg):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=msg) as e:
        read_particles(tmp_path / name)
    assert name in str(e.value)          # every message names the file


def test_non_utf8_and_binary(tmp_path):
    (tmp_path / "a.box").write_bytes(b"1 2 3 3\n\xff\xfe")
    with pytest.raises(ValueError, match="a.box: not a UTF-8 text file"):
        read_particles(tmp_path / "a.box")
    (tmp_path / "b.csv").write_bytes(b"X-Coordinate\x00")
    with pytest.raises(ValueError, match="b.csv: binary data"):
        read_particles(tmp_path / "b.csv")


def test_coordinates_outside_image():
    p = make_particles([0.0, 9.0, 9.5, 3.0, -0.1], [0.0, 4.0, 1.0, 5.0, 2.0])
    with pytest.raises(ValueError, match="picks.star: 3 of 5 particle centres lie outside the 5x10 image"):
        check_coordinates(p, (5, 10), path="picks.star")
    with pytest.warns(UserWarning, match="3 of 5"):
        c = check_coordinates(p, (5, 10), action="clip")
    assert c.x.tolist() == [0.0, 9.0, 9.0, 3.0, 0.0] and c.y.tolist() == [0.0, 4.0, 1.0, 4.0, 2.0]
    with pytest.warns(UserWarning, match="dropped"):
        d = check_coordinates(p, (5, 10), action="drop")
    assert d.x.tolist() == [0.0, 9.0] and list(d.index) == [0, 1]
    with pytest.raises(ValueError, match="action must be"):
        check_coordinates(p, (5, 10), action="ignore")


def test_multi_micrograph_tables(tmp_path):
    "BOX holds one micrograph; CryoPPP CSV and Topaz keep the names of several."
    p = make_particles([1.0, 2.0], [1.0, 2.0], micrograph=["a", "b"])
    with pytest.raises(ValueError, match="one file per micrograph"):
        write_particles(tmp_path / "p.box", p, box_size_px=8)
    for ext in ("txt", "csv", "star"):
        assert read_particles(write_particles(tmp_path / f"p.{ext}", p)).micrograph.tolist() == ["a", "b"]


def test_strip_uid():
    assert strip_uid("J1/imported/000000000000000000001_a_b.mrc") == "J1/imported/a_b.mrc"
    assert strip_uid("000000000000000000001_.mrc") == ".mrc"
    assert strip_uid("000000000000000000001_") == "000000000000000000001_"   # nothing after the UID
    assert strip_uid("1234_a.mrc") == "1234_a.mrc"


def test_star_mixed_uids_not_stripped(tmp_path):
    f = tmp_path / "m.star"
    f.write_text("data_\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\n"
                 "012345678901234567890_a.mrc 1 2\nb.mrc 3 4\n")
    assert read_star(f).micrograph.tolist() == ["012345678901234567890_a.mrc", "b.mrc"]
    assert read_star(f, strip_uids=True).micrograph.tolist() == ["a.mrc", "b.mrc"]


def test_star_multiple_optics_groups_round_trip(tmp_path):
    f = tmp_path / "g.star"
    f.write_text("data_optics\nloop_\n_rlnOpticsGroupName\n_rlnOpticsGroup\n_rlnVoltage\n_rlnMicrographPixelSize\n"
                 "og1 1 300 1.0\nog2 2 200 0.5\n\ndata_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n"
                 "_rlnOpticsGroup\n1 2 1\n3 4 2\n")
    p = read_star(f)
    assert p.attrs["optics"] == {"voltage_kv": 300.0, "pixel_size_a": 1.0}
    assert [g["voltage_kv"] for g in p.attrs["optics_groups"]] == [300.0, 200.0]
    assert p.rlnOpticsGroup.tolist() == [1, 2]
    q = read_star(write_star(tmp_path / "g2.star", p))
    pd.testing.assert_frame_equal(q, p)
    assert q.attrs["optics_groups"] == p.attrs["optics_groups"]


# ---------------------------------------------------------------- fuzzing: random bytes

@pytest.mark.parametrize("ext", [".mrc", ".star", ".box", ".csv", ".txt", ".png"])
@given(data=st.binary(max_size=2048))
@FUZZ
def test_random_bytes_give_clear_errors(tmp_path, ext, data):
    f = tmp_path / f"fuzz{ext}"
    f.write_bytes(data)
    reader = read_micrograph if ext in (".mrc", ".png") else read_particles
    out = read_or_clear_error(reader, f)
    if out is None:
        return
    if reader is read_micrograph:
        img, pix = out
        assert img.ndim == 2 and img.dtype == np.float32 and np.isfinite(img).all()
    else:
        assert_valid_table(out)


_STAR_LINES = ["data_", "data_particles", "data_optics", "loop_", "_rlnCoordinateX #1", "_rlnCoordinateY #2",
               "_rlnMicrographName", "_rlnDefocusU", "_rlnVoltage 300", "_rlnOpticsGroup", "1.0 2.0", "3 4 5",
               '"a b" 1 2', "'x' 1e3 -2", "# comment", "", "nan inf", "<NA> 1", "1_0 2", "x.mrc 10 20", '"open 1 2',
               "cryosegParticleId", "_cryosegParticleId", "data_data_", "1 2 # c"]


@given(lines=st.lists(st.sampled_from(_STAR_LINES), max_size=14))
@FUZZ
def test_star_like_text_gives_clear_errors(tmp_path, lines):
    f = tmp_path / "s.star"
    f.write_text("\n".join(lines))
    out = read_or_clear_error(read_star, f)
    if out is not None:
        assert_valid_table(out)
        assert len(out) > 0


_TOKENS = {
    ".box": ["1", "2.5", "-3", "64", "64", "nan", "inf", "1e400", "x", "#", " ", "\t", "\n", "0", "1e-400", "12 34 64 64\n"],
    ".csv": ["X-Coordinate", "Y-Coordinate", "Diameter", "Angle-Psi", "Class-Number", ",", "\n", "1", "2.5", "nan",
             '"', "a", "", "-1", "1e308", "X-Coordinate,Y-Coordinate\n"],
    ".txt": ["image_name", "x_coord", "y_coord", "score", "\t", "\n", "m", "1", "2.5", "nan", "inf", " ", "007",
             "image_name\tx_coord\ty_coord\n"],
}


@pytest.mark.parametrize("ext", sorted(_TOKENS))
@given(data=st.data())
@FUZZ
def test_format_like_text_gives_clear_errors(tmp_path, ext, data):
    "Text built from each format's own vocabulary reaches the parsers' corners; still only clear errors."
    text = "".join(data.draw(st.lists(st.sampled_from(_TOKENS[ext]), max_size=30)))
    f = tmp_path / f"t{ext}"
    f.write_text(text, encoding="utf-8")
    out = read_or_clear_error(read_particles, f)
    if out is not None:
        assert_valid_table(out)
        assert len(out) > 0


@pytest.mark.parametrize("ext", [".star", ".box", ".csv", ".txt"])
@given(text=st.text(max_size=300))
@FUZZ
def test_random_text_gives_clear_errors(tmp_path, ext, text):
    f = tmp_path / f"u{ext}"
    f.write_text(text, encoding="utf-8")
    out = read_or_clear_error(read_particles, f)
    if out is not None:
        assert_valid_table(out)


@given(flips=st.lists(st.tuples(st.integers(0, 1024 + 16 * 24 * 4 - 1), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 1024 + 16 * 24 * 4))
@FUZZ
def test_corrupted_mrc_gives_clear_errors(tmp_path, flips, cut):
    img = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
    good = tmp_path / "good.mrc"
    if not good.exists():
        write_micrograph(good, img, pixel_size_a=1.0)
    raw = bytearray(good.read_bytes())
    for i, b in flips:
        raw[i] = b
    f = tmp_path / "c.mrc"
    f.write_bytes(bytes(raw[:cut]) if cut is not None else bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = read_or_clear_error(read_micrograph, f)
    if res is None:
        return
    out, pix = res
    assert out.ndim == 2 and out.dtype == np.float32 and np.isfinite(out).all()
    assert pix is None or pix > 0


# ---------------------------------------------------------------- fuzzing: random tables round-trip

finite = st.floats(allow_nan=False, allow_infinity=False)
anyfloat = st.floats(allow_nan=True, allow_infinity=True)
names = st.text(alphabet="abcXYZ019_-./ é", max_size=12)


@st.composite
def tables(draw, max_rows=6):
    n = draw(st.integers(1, max_rows))
    col = lambda s: draw(st.lists(s, min_size=n, max_size=n))
    kw = dict(x=col(finite), y=col(finite),
              score=col(anyfloat) if draw(st.booleans()) else None,
              diameter_px=col(st.floats(min_value=1e-3, max_value=1e6)) if draw(st.booleans()) else None,
              micrograph=draw(names))
    for c in ("rot_deg", "tilt_deg", "psi_deg", "origin_x_a", "origin_y_a", "defocus_u_um", "defocus_v_um", "defocus_angle_deg"):
        if draw(st.booleans()):
            kw[c] = col(anyfloat)
    if draw(st.booleans()):
        kw["particle_id"] = col(st.integers(1, 2**40))
    if draw(st.booleans()):
        kw["rlnClassNumber"] = col(st.integers(-2**62, 2**62))
    return make_particles(**kw)


@given(df=tables())
@FUZZ
def test_star_round_trip(tmp_path, df):
    opt = dict(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=1.234) if df.x.iloc[0] > 0 else None
    f = write_star(tmp_path / "t.star", df, optics=opt, overwrite=True)
    back = read_star(f, strip_uids=False)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs.get("optics") == opt


@given(df=tables(), box=st.integers(1, 512) | st.floats(min_value=0.5, max_value=1e4))
@FUZZ
def test_box_round_trip(tmp_path, df, box):
    f = write_box(tmp_path / "t.box", df, box_size_px=box, overwrite=True)
    back = read_box(f, micrograph=df.micrograph[0])
    pd.testing.assert_frame_equal(back, make_particles(df.x, df.y, micrograph=df.micrograph[0]), check_exact=True)
    assert back.attrs["box_size_px"] == box
    again = read_box(write_box(tmp_path / "t2.box", back, overwrite=True))   # box size from attrs
    assert again.attrs["box_size_px"] == box


@given(df=tables())
@FUZZ
def test_cryoppp_csv_round_trip(tmp_path, df):
    f = write_cryoppp_csv(tmp_path / "t.csv", df, overwrite=True)
    back = read_cryoppp_csv(f, micrograph=df.micrograph[0])
    keep = [c for c in df.columns if c not in ("particle_id", "rlnClassNumber")]
    pd.testing.assert_frame_equal(back[keep], df[keep], check_exact=True)


@given(dfs=st.lists(tables(max_rows=3), min_size=2, max_size=3))
@FUZZ
def test_cryoppp_metadata_csv_round_trip(tmp_path, dfs):
    df = pd.concat([d[["micrograph", "x", "y", "score"]].assign(micrograph=f"m{i}{d.micrograph[0]}")
                    for i, d in enumerate(dfs)], ignore_index=True)
    df = make_particles(df.x, df.y, score=df.score, micrograph=df.micrograph.tolist())
    back = read_cryoppp_csv(write_cryoppp_csv(tmp_path / "t.csv", df, overwrite=True))
    pd.testing.assert_frame_equal(back, df, check_exact=True)


@given(dfs=st.lists(tables(max_rows=3), min_size=1, max_size=3))
@FUZZ
def test_topaz_round_trip(tmp_path, dfs):
    df = pd.concat(dfs, ignore_index=True)[["micrograph", "x", "y", "score"]]
    df = make_particles(df.x, df.y, score=df.score, micrograph=df.micrograph.tolist())
    back = read_topaz(write_topaz(tmp_path / "t.txt", df, overwrite=True))
    pd.testing.assert_frame_equal(back, df, check_exact=True)


def test_empty_tables_round_trip(tmp_path):
    e = make_particles([], [])
    for ext in ("star", "csv", "txt"):
        back = read_particles(write_particles(tmp_path / f"e.{ext}", e), allow_empty=True)
        pd.testing.assert_frame_equal(back, e)
    back = read_particles(write_particles(tmp_path / "e.box", e, box_size_px=10), allow_empty=True)
    pd.testing.assert_frame_equal(back, e)


def test_starfile_reads_what_we_write(tmp_path):
    import starfile
    df = make_particles([1.5, 2.25], [3.0, 4.0], score=[0.5, 0.25], micrograph=["a.mrc", "b.mrc"],
                        defocus_u_um=[1.5, 2.0], rot_deg=[10.0, 20.0])
    f = write_star(tmp_path / "a.star", df, optics=dict(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, pixel_size_a=1.0))
    sf = starfile.read(f)
    p = sf["particles"]
    assert p.rlnMicrographName.tolist() == ["a.mrc", "b.mrc"]
    assert p.rlnDefocusU.tolist() == [15000, 20000] and p.rlnCoordinateX.tolist() == [1.5, 2.25]
    assert sf["optics"].rlnMicrographPixelSize[0] == 1.0


# ---------------------------------------------------------------- downloads

@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    payload = np.random.default_rng(3).bytes(150_000)
    (root / "f.bin").write_bytes(payload)
    with serve_folder(root) as url:
        yield url, payload


def test_serve_folder_ranges(site):
    import urllib.request
    url, payload = site
    req = urllib.request.Request(url + "f.bin", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 206 and r.read() == payload[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(payload)}"
    req = urllib.request.Request(url + "f.bin", headers={"Range": "bytes=-5"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.read() == payload[-5:]
    with urllib.request.urlopen(url + "f.bin", timeout=5) as r:
        assert r.status == 200 and r.read() == payload
    req = urllib.request.Request(url + "f.bin", headers={"Range": f"bytes={len(payload)}-"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 416


def test_download_whole_file_and_checksum(site, tmp_path):
    "pooch downloads from byte 0 (no resume): a stale .part is ignored; a wrong SHA-256 leaves nothing behind."
    url, payload = site
    dest = tmp_path / "out" / "f.bin"
    dest.parent.mkdir()
    (dest.parent / "f.bin.part").write_bytes(b"\0" * 1000)        # left by cryoseg's old downloader
    got = download(url + "f.bin", dest, progress=False)
    assert got.read_bytes() == payload
    assert url.requests[-1] == ("/f.bin", None)                  # the whole file, no Range request
    dest.unlink()
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        download(url + "f.bin", dest, sha256="0" * 64, progress=False, retries=0)
    assert not dest.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin.part"]   # no temporary file left
    download(url + "f.bin", dest, expected_size=len(payload), sha256=hashlib.sha256(payload).hexdigest(), progress=True)
    assert dest.read_bytes() == payload


def test_download_existing_file_and_overwrite(site, tmp_path):
    url, payload = site
    dest = tmp_path / "f.bin"
    download(url + "f.bin", dest, progress=False)
    assert dest.read_bytes() == payload
    n = len(url.requests)
    assert download(url + "f.bin", dest, sha256=hashlib.sha256(payload).hexdigest(), progress=False) == dest
    assert len(url.requests) == n                                # a matching file is a cache hit: no request
    dest.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="does not match"):
        download(url + "f.bin", dest, expected_size=len(payload), progress=False)
    assert download(url + "f.bin", dest, progress=False).read_bytes() == b"old"   # no check requested: kept
    download(url + "f.bin", dest, overwrite=True, progress=False)
    assert dest.read_bytes() == payload


def test_download_size_checked(site, tmp_path):
    "The final size check catches a wrong file, and nothing is left behind."
    url, payload = site
    with pytest.raises(ValueError, match="expected 5 bytes"):
        download(url + "f.bin", tmp_path / "h.bin", expected_size=5, progress=False)
    assert list(tmp_path.glob("*h.bin*")) == []


def test_download_wrong_size(site, tmp_path):
    url, payload = site
    with pytest.raises(ValueError, match=rf"f.bin: download of .* is corrupt \(expected 10 bytes, the server announces {len(payload)}\)"):
        download(url + "f.bin", tmp_path / "f.bin", expected_size=10, progress=False)
    assert list(tmp_path.glob("*f.bin*")) == []


def test_download_unreachable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(ConnectionError, match=f"could not download {url}"):
        download(url, tmp_path / "x.bin", progress=False, timeout_s=2, retries=0)
    assert not (tmp_path / "x.bin").exists()


def test_download_timeout(tmp_path):
    "A server that accepts the connection and never answers: ConnectionError after `timeout_s`."
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.bin"
        t0 = time.perf_counter()
        with pytest.raises(ConnectionError, match=f"could not download {url}: .*Timeout"):
            download(url, tmp_path / "x.bin", progress=False, timeout_s=0.5, retries=0)
        assert time.perf_counter() - t0 < 10
    assert list(tmp_path.iterdir()) == []


def test_download_http_error(site, tmp_path):
    url, _ = site
    with pytest.raises(ConnectionError, match="HTTP 404"):
        download(url + "missing", tmp_path / "m", progress=False, retries=0)
    assert list(tmp_path.glob("*m*")) == []


def _flaky_server(payload, fail_first: int, cut: bool):
    "A server whose first `fail_first` answers fail: a dropped connection half-way (`cut`) or HTTP 503."
    import http.server
    import threading
    calls = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            if len(calls) <= fail_first and not cut:
                self.send_error(503, "busy")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:60_000] if len(calls) <= fail_first else payload)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/f.bin", calls


def test_download_interrupted(site, tmp_path):
    "A server that drops the connection half-way: ConnectionError, nothing left behind; the next call works."
    url, payload = site
    srv, flaky, _ = _flaky_server(payload, fail_first=10, cut=True)
    dest = tmp_path / "out" / "f.bin"
    try:
        with pytest.raises(ConnectionError, match=f"could not download {flaky}"):
            download(flaky, dest, progress=False, timeout_s=5, retries=0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    download(url + "f.bin", dest, sha256=hashlib.sha256(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload


@pytest.mark.parametrize("cut", [False, True])
def test_download_retries(tmp_path, cut):
    "pooch retries after a failed attempt (HTTP 503, or a connection dropped half-way)."
    payload = np.random.default_rng(4).bytes(100_000)
    srv, flaky, calls = _flaky_server(payload, fail_first=1, cut=cut)
    try:
        with pytest.raises(ConnectionError):
            download(flaky, tmp_path / "a.bin", progress=False, retries=0)
        del calls[:]
        got = download(flaky, tmp_path / "b.bin", sha256=hashlib.sha256(payload).hexdigest(), progress=False, retries=1)
    finally:
        srv.shutdown()
        srv.server_close()
    assert got.read_bytes() == payload and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_download_bad_url(tmp_path):
    with pytest.raises(ValueError, match="not an http"):
        download("data/f.bin", tmp_path / "f.bin", progress=False)
    with pytest.raises(ValueError, match="not an http"):
        download("file:///etc/hostname", tmp_path / "f.bin", progress=False)


def test_star_optics_validation(tmp_path):
    p = make_particles([1.0], [2.0])
    f = write_star(tmp_path / "a.star", p, optics=dict(voltage_kv=np.float32(300), cs_mm=None, pixel_size_a=1))
    assert read_star(f).attrs["optics"] == {"voltage_kv": 300.0, "pixel_size_a": 1.0}
    with pytest.raises(ValueError, match="unknown optics key 'defocus'"):
        write_star(tmp_path / "b.star", p, optics=dict(defocus=1.0))
    with pytest.raises(ValueError, match="must be a number or a string"):
        write_star(tmp_path / "c.star", p, optics=dict(voltage_kv=[300]))
    assert not (tmp_path / "b.star").exists() and not (tmp_path / "c.star").exists()


def test_mrc_bytes_reproducible(tmp_path):
    "Writing the same array twice gives the same bytes (no timestamp in the MRC header labels)."
    import time
    from cryoseg.io import write_micrograph, write_mask
    a = np.arange(64, dtype=np.float32).reshape(8, 8)
    write_micrograph(tmp_path / "a.mrc", a, 1.5)
    time.sleep(1.1)
    write_micrograph(tmp_path / "b.mrc", a, 1.5)
    assert (tmp_path / "a.mrc").read_bytes() == (tmp_path / "b.mrc").read_bytes()
    m = (a > 30).astype(np.uint8)
    write_mask(tmp_path / "m1.mrc", m); time.sleep(1.1); write_mask(tmp_path / "m2.mrc", m)
    assert (tmp_path / "m1.mrc").read_bytes() == (tmp_path / "m2.mrc").read_bytes()


# ================================================================ issue 15: never lose a user's work
# (names new in issue 15 are imported inside the tests, so the older tests still run on older code)

import errno  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from cryoseg.io import list_micrographs  # noqa: E402


def _finishes(fn, fifo=None, timeout=10):
    "`fn()` in a thread; fails the test when it is still running after `timeout` s (blocked on a FIFO), releasing it."
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if fifo is not None:                       # a reader blocked in open(): give it a writer that closes at once
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"still running after {timeout} s: it opened a FIFO")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ---------------------------------------------------------------- temporary files

@pytest.mark.parametrize("name", ["m0002.mrc", "a.png", "picks.star", "best.pt", "data.tar.gz", ".hidden", "x" * 250])
def test_atomic_path_temporary_names_are_never_input(tmp_path, name):
    "The temporary name is hidden and does not end with the final suffix (a crash must not leave a fake input)."
    from cryoseg.io import ignored_name
    target = tmp_path / name
    with atomic_path(target) as t:
        assert t.parent == tmp_path and t.name.startswith(".") and t.name.endswith(".tmp")
        assert not t.name.lower().endswith(Path(name).suffix.lower() or ".tmp" + "x")
        assert ignored_name(t.name) and len(t.name.encode()) <= 255
        t.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and [p.name for p in tmp_path.iterdir()] == [name]


def test_a_crash_mid_write_leaves_no_micrograph(tmp_path):
    "kill -9 between write and rename: the next folder reader must not take the leftover for a micrograph."
    img = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    write_micrograph(tmp_path / "m0001.mrc", img)
    code = ("import os, sys, numpy as np\nfrom cryoseg.io import write_micrograph\nimport mrcfile\n"
            "orig = mrcfile.new\n"
            "def new(p, *a, **k):\n    m = orig(p, *a, **k)\n    m.set_data(np.zeros((16, 16), np.float32) + 1)\n"
            "    m.close(); os._exit(9)\n"
            "mrcfile.new = new\n"
            f"write_micrograph({str(tmp_path / 'm0002.mrc')!r}, np.ones((16, 16), np.float32))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m0001.mrc"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m0002.mrc.")      # the crash left its temporary file
    for name in (".m0003.1f2e3d4c.tmp.mrc", "._m0001.mrc", ".DS_Store", "m0004.mrc.part"):   # old style, macOS, partial
        (tmp_path / name).write_bytes((tmp_path / "m0001.mrc").read_bytes())
    assert [p.name for p in list_micrographs(tmp_path)] == ["m0001.mrc"]


def test_disk_full_names_the_target(tmp_path):
    target = tmp_path / "out" / "per_micrograph.csv"
    with pytest.raises(OSError, match=r"per_micrograph\.csv: No space left on device") as e:
        with atomic_path(target) as t:
            t.write_text("half a ro")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and str(target) in str(e.value)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_image_writers_do_not_need_the_suffix(tmp_path, ext):
    "The temporary name has no image suffix: Pillow and tifffile are told the format."
    u8 = np.random.default_rng(1).integers(0, 256, (12, 10)).astype(np.uint8)
    back, _ = read_micrograph(write_micrograph(tmp_path / f"a{ext}", u8))
    assert back.shape == u8.shape and (ext == ".jpg" or np.array_equal(back, u8))


# ---------------------------------------------------------------- folders

def test_list_micrographs_refuses_bad_entries_and_never_opens_them(tmp_path):
    (tmp_path / "a.mrc").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.mrc")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    os.symlink(tmp_path / "gone.mrc", tmp_path / "lost.mrc")
    with pytest.raises(ValueError) as e:
        _finishes(lambda: list_micrographs(tmp_path), fifo=tmp_path / "pipe.mrc")
    msg = str(e.value)
    assert str(tmp_path) in msg and "3 of the micrographs cannot be read" in msg
    for part in ("pipe.mrc: a FIFO (named pipe)", "zero.png: a character device", "lost.mrc: dangling symbolic link"):
        assert part in msg
    with pytest.warns(UserWarning, match="lost.mrc: dangling"):
        assert [p.name for p in list_micrographs(tmp_path, on_bad="warn")] == ["a.mrc"]


def test_two_inputs_one_output_name_are_refused(tmp_path):
    from cryoseg.io import output_stems
    for name in ("mic.mrc", "mic.png", "other.mrc"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"mic\.mrc and .*mic\.png map to one output name 'mic'"):
        list_micrographs(tmp_path)
    assert output_stems([tmp_path / "a.mrc", tmp_path / "b.mrc"]) == {"a": tmp_path / "a.mrc", "b": tmp_path / "b.mrc"}
    with pytest.raises(ValueError, match="Mic.tif and mic.mrc"):
        output_stems(["Mic.tif", "mic.mrc"])


_NAMES = ["a.mrc", "a.png", "b.MRC", "c.tif", "d.mrcs", ".e.mrc", "._b.mrc", ".b.mrc.1f2e3d4c.tmp",
          ".b.1f2e3d4c.tmp.mrc", "f.mrc.part", "g.txt", "h.map", "i.mrc~", "B.png"]
_KINDS = ["file", "file", "dir", "fifo", "dangling", "devzero", "link"]


def _make_entry(p: Path, kind: str, target: Path) -> None:
    if kind == "file":
        p.write_bytes(b"x")
    elif kind == "dir":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    else:
        os.symlink({"dangling": target.parent / "nowhere", "devzero": "/dev/zero", "link": target}[kind], p)


@given(entries=st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(_KINDS), max_size=8))
@settings(max_examples=80, deadline=None)
def test_list_files_fuzz(entries):
    "Any folder: the listing is exactly the readable, visible micrographs, or a clear error; nothing is opened."
    from cryoseg.io import MICROGRAPH_EXTENSIONS, ignored_name, list_files
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        folder = d / "mics"
        folder.mkdir()
        (d / "target.bin").write_bytes(b"x")
        for name, kind in entries.items():
            _make_entry(folder / name, kind, d / "target.bin")
        cand = {n: k for n, k in entries.items()
                if not ignored_name(n) and Path(n).suffix.lower() in MICROGRAPH_EXTENSIONS}
        bad = sorted(n for n, k in cand.items() if k in ("fifo", "dangling", "devzero"))
        good = sorted(n for n, k in cand.items() if k in ("file", "link"))
        stems = [Path(n).stem.casefold() for n in good]
        try:
            got = _finishes(lambda: list_files(folder, MICROGRAPH_EXTENSIONS, "micrographs"))
        except ValueError as e:
            assert bad or len(set(stems)) < len(stems), str(e)
            assert str(folder) in str(e) or any(n in str(e) for n in good)
            for n in bad:
                assert f"{n}: " in str(e)
            return
        assert not bad and len(set(stems)) == len(stems)
        assert [p.name for p in got] == good


# ---------------------------------------------------------------- reading: special files, headers, TIFF

@pytest.mark.parametrize("read,name", [(read_micrograph, "x.mrc"), (read_micrograph, "x.png"), (read_mask, "x.mrc"),
                                       (read_particles, "x.star"), (read_particles, "x.box")])
def test_readers_refuse_special_files(tmp_path, read, name):
    "A FIFO would hang the reader, a link to /dev/zero is endless, a dangling link is gone: clear errors, at once."
    fifo = tmp_path / f"fifo_{name}"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"fifo_{name}: is a FIFO .*not a regular file"):
        _finishes(lambda: read(fifo), fifo=fifo)
    os.symlink("/dev/zero", tmp_path / f"zero_{name}")
    with pytest.raises(ValueError, match=f"zero_{name}: is a character device"):
        _finishes(lambda: read(tmp_path / f"zero_{name}"))
    os.symlink(tmp_path / "nowhere", tmp_path / f"lost_{name}")
    with pytest.raises(FileNotFoundError, match=f"lost_{name}: dangling symbolic link"):
        read(tmp_path / f"lost_{name}")


def _mrc_claiming(path, nx, ny, nz=1, mode=2, next_=0, size=None):
    "An MRC header (from mrcfile) claiming `nx, ny, nz`, `mode`, `next_` extended bytes, in a file of `size` bytes."
    with tempfile.TemporaryDirectory() as d:
        with mrcfile.new(Path(d) / "h.mrc") as m:
            m.set_data(np.zeros((2, 2), np.float32))
        raw = bytearray((Path(d) / "h.mrc").read_bytes()[:1024])
    raw[0:16] = np.array([nx, ny, nz, mode], "<i4").tobytes()
    raw[92:96] = np.array([next_], "<i4").tobytes()
    with open(path, "wb") as f:
        f.write(raw)
        f.truncate(1024 if size is None else size)
    return path


def test_mrc_header_claims_are_capped(tmp_path):
    "A header may not claim more than the file holds, nor (from 256 MiB) much more than it stores: a sparse file."
    f = _mrc_claiming(tmp_path / "claim.mrc", 46341, 46341)                 # 8 GiB claimed, 1 kB file
    with pytest.raises(ValueError, match=r"claim.mrc: not a readable MRC file \(the header claims 8589953124 bytes"):
        read_micrograph(f)
    sparse = _mrc_claiming(tmp_path / "sparse.mrc", 8192, 8192, size=1024 + 8192**2 * 4)   # 256 MiB of holes
    if sparse.stat().st_blocks * 512 > 2**20:
        pytest.skip("this file system does not make sparse files")
    for read in (read_micrograph, read_mask):
        with pytest.raises(ValueError, match="sparse.mrc: not a readable MRC file .*a sparse or corrupt file"):
            read(sparse)
    ext = _mrc_claiming(tmp_path / "ext.mrc", 4, 4, next_=2**28, size=1024 + 2**28 + 64)   # a 256 MiB extended header
    with pytest.raises(ValueError, match="ext.mrc: .*claims 268435520 bytes of extended header and data"):
        read_micrograph(ext)


def test_movie_refused_from_its_header(tmp_path):
    "A stack of frames is refused before its data are read (the header says so)."
    f = _mrc_claiming(tmp_path / "movie.mrcs", 64, 64, nz=40, size=1024 + 64 * 64 * 40 * 4)
    with pytest.raises(ValueError, match=r"movie.mrcs: expected a 2D micrograph .*got shape \(40, 64, 64\) \(a movie"):
        read_micrograph(f)


@given(nx=st.integers(-2**31, 2**31 - 1), ny=st.integers(-2**31, 2**31 - 1), nz=st.integers(-2**31, 2**31 - 1),
       mode=st.sampled_from([0, 1, 2, 3, 4, 6, 12, 101, 5, -1, 2**30]), next_=st.integers(-2**31, 2**31 - 1),
       size=st.integers(0, 4096))
@settings(max_examples=150, deadline=None)
def test_mrc_header_claims_fuzz(nx, ny, nz, mode, next_, size):
    "Any header on a small file: a clear error naming it, or an image whose size the file holds; never slow."
    with tempfile.TemporaryDirectory() as d:
        f = _mrc_claiming(Path(d) / "h.mrc", nx, ny, nz, mode, next_, size)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = read_or_clear_error(lambda p: read_micrograph(p, check=False), f)
        assert time.perf_counter() - t0 < 5
    if out is not None:
        img, _ = out
        assert img.ndim == 2 and img.size <= 2 * size


def test_planar_rgb_tiff_is_colour_not_a_movie(tmp_path):
    import tifffile
    rgb = np.random.default_rng(2).integers(0, 256, (3, 9, 11)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    img, _ = read_micrograph(tmp_path / "planar.tif")
    np.testing.assert_allclose(img, rgb.mean(0).astype(np.float32))
    tifffile.imwrite(tmp_path / "frames.tif", rgb, photometric="minisblack")
    with pytest.raises(ValueError, match="frames.tif: .*a movie or a stack of several frames"):
        read_micrograph(tmp_path / "frames.tif")


# ---------------------------------------------------------------- STAR blocks and strict numbers

def test_star_two_coordinate_blocks(tmp_path):
    "Two coordinate tables: one table when compatible (same labels, micrograph names), else refused naming both."
    f = tmp_path / "two.star"
    f.write_text("data_a\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\nm1.mrc 1 2\n\n"
                 "data_b\nloop_\n_rlnCoordinateY\n_rlnCoordinateX\n_rlnMicrographName\n4 3 m2.mrc\n5 6 m2.mrc\n")
    p = read_star(f)
    assert p.micrograph.tolist() == ["m1.mrc", "m2.mrc", "m2.mrc"] and p.x.tolist() == [1.0, 3.0, 6.0]
    g = tmp_path / "nonames.star"
    g.write_text("data_a\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n\ndata_b\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n3 4\n")
    with pytest.raises(ValueError, match=r"nonames.star: 2 coordinate tables \(data_a, data_b\) without rlnMicrographName"):
        read_star(g)
    h = tmp_path / "cols.star"
    h.write_text("data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnMicrographName\n1 2 a\n\n"
                 "data_more\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnMicrographName\n_rlnAnglePsi\n3 4 b 10\n")
    with pytest.raises(ValueError, match=r"cols.star: 2 coordinate tables \(data_particles, data_more\) with different columns"):
        read_star(h)


def _with_rows(fmt, cells, blank):
    "A coordinate file of `fmt` with the (x, y) text `cells`; returns (text, line of row 0, x/y column names)."
    pre = [""] if blank else []
    if fmt == "star":
        head = ["data_", "loop_", "_rlnCoordinateX", "_rlnCoordinateY"] + pre
        return "\n".join(head + [f"{x} {y}" for x, y in cells]) + "\n", len(head) + 1, ("rlnCoordinateX", "rlnCoordinateY")
    if fmt == "box":
        return "\n".join(pre + [f"{x} {y} 64 64" for x, y in cells]) + "\n", len(pre) + 1, ("1", "2")
    if fmt == "csv":
        head = ["X-Coordinate,Y-Coordinate"] + pre
        return "\n".join(head + [f"{x},{y}" for x, y in cells]) + "\n", len(head) + 1, ("X-Coordinate", "Y-Coordinate")
    head = ["image_name\tx_coord\ty_coord"] + pre
    return "\n".join(head + [f"m\t{x}\t{y}" for x, y in cells]) + "\n", len(head) + 1, ("x_coord", "y_coord")


_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@given(fmt=st.sampled_from(["star", "box", "csv", "txt"]), n=st.integers(1, 6), blank=st.booleans(), data=st.data())
@FUZZ
def test_numbers_python_accepts_but_files_do_not_mean(tmp_path, fmt, n, blank, data):
    "`1_00` (float() reads 100) or non-ASCII digits in any coordinate file: an error naming file, line and column."
    cells = [[str(data.draw(st.integers(0, 5000))), str(data.draw(st.integers(0, 5000)))] for _ in range(n)]
    row, col = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, 1))
    digits = str(data.draw(st.integers(10, 10**9)))
    cut = data.draw(st.integers(1, len(digits) - 1))
    bad = data.draw(st.sampled_from([digits[:cut] + "_" + digits[cut:], digits.translate(_FULLWIDTH)]))
    cells[row][col] = bad
    text, first, names = _with_rows(fmt, cells, blank)
    f = tmp_path / f"n.{fmt}"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_particles(f)
    assert f"n.{fmt}: line {first + row}, column {names[col]}: {bad!r} is not a number" in str(e.value)


@pytest.mark.parametrize("fmt", ["star", "box", "csv", "txt"])
def test_strict_numbers_still_read(tmp_path, fmt):
    tokens = ["1.", ".5", "+2", "1E3", "-0.0", "7", "2.5e-3", " 3"]
    text, _, _ = _with_rows(fmt, [[t.strip(), "1"] for t in tokens], False)
    (tmp_path / f"ok.{fmt}").write_text(text)
    df = read_particles(tmp_path / f"ok.{fmt}")
    expect = [float(t) + (32 if fmt == "box" else 0) for t in tokens]
    assert df.x.tolist() == expect


def test_star_integer_and_optics_columns_are_strict(tmp_path):
    f = tmp_path / "ids.star"
    f.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_cryosegParticleId\n_rlnClassNumber\n1 2 1 1_0\n3 4 2_0 2\n")
    with pytest.raises(ValueError, match=r"ids.star: line 8, column cryosegParticleId: '2_0' is not a 64-bit integer"):
        read_star(f)
    f.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnClassNumber\n1 2 1_0\n3 4 2\n")
    assert read_star(f).rlnClassNumber.tolist() == ["1_0", "2"]          # an unknown column keeps its text
    g = tmp_path / "opt.star"
    g.write_text("data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 3_00\n\ndata_particles\nloop_\n"
                 "_rlnCoordinateX\n_rlnCoordinateY\n1 2\n")
    with pytest.raises(ValueError, match=r"opt.star: line 5, column rlnVoltage: '3_00' is not a number"):
        read_star(g)


# ---------------------------------------------------------------- downloads: deadline, cap, validation

def test_download_endless_body_stops_at_the_cap(site, tmp_path):
    url, _ = site
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"e\.bin: download of .*_faults/endless/e\.bin stopped after \d+ bytes, "
                                         r"more than max_bytes=4194304"):
        download(url + "_faults/endless/e.bin", tmp_path / "out" / "e.bin", max_bytes=4 * 2**20, progress=False)
    assert time.perf_counter() - t0 < 20 and list((tmp_path / "out").iterdir()) == []


def test_download_announced_size_over_the_cap(site, tmp_path):
    url, _ = site
    with pytest.raises(ValueError, match=f"announces {2**40} bytes, more than max_bytes="):
        download(url + "_faults/huge/h.bin", tmp_path / "out" / "h.bin", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_no_space_for_the_announced_size(site, tmp_path, monkeypatch):
    import shutil as _shutil
    url, payload = site
    monkeypatch.setattr(_shutil, "disk_usage", lambda p: _shutil._ntuple_diskusage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match=r"f\.bin: .*announces 150000 bytes, only 100 bytes are free") as e:
        download(url + "f.bin", tmp_path / "out" / "f.bin", progress=False)
    assert e.value.errno == errno.ENOSPC and list((tmp_path / "out").iterdir()) == []


def test_download_slow_drip_ends_at_the_deadline(site, tmp_path):
    "Each byte arrives well within the socket timeout; the total deadline still ends the download."
    url, _ = site
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="not finished within the deadline of 1.5 s"):
        download(url + "_faults/slow/s.bin", tmp_path / "out" / "s.bin", deadline_s=1.5, timeout_s=10, progress=False)
    assert time.perf_counter() - t0 < 5 and list((tmp_path / "out").iterdir()) == []


def test_fetch_pdb_refuses_an_html_page_and_keeps_nothing(site, tmp_path):
    from cryoseg.fetch import fetch_pdb
    url, _ = site
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"1ABC\.cif: download of .*1ABC\.cif refused: an HTML page, not an mmCIF file"):
        fetch_pdb("1abc", cache_dir=cache, base_url=url + "_faults/html/", progress=False)
    assert list(cache.iterdir()) == []
    (cache / "1ABC.cif").write_text("<!DOCTYPE html><html>cached by an older cryoseg</html>")
    root = tmp_path / "site"
    (root / "1ABC.cif").write_text("data_1ABC\nloop_\n_atom_site.id\n_atom_site.type_symbol\n1 C\n")
    with pytest.warns(UserWarning, match="1ABC.cif: the cached file is not valid"):
        got = fetch_pdb("1abc", cache_dir=cache, base_url=url, progress=False)
    assert got.read_text().startswith("data_1ABC")
    (root / "2XYZ.cif").write_text("data_2XYZ\n_entry.id 2XYZ\n")
    with pytest.raises(ValueError, match="2XYZ.cif: .*without atoms"):
        fetch_pdb("2xyz", cache_dir=cache, base_url=url, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["1ABC.cif"]


def test_fetch_emdb_checks_the_map_and_the_registry(site, tmp_path):
    import gzip
    from cryoseg.fetch import fetch_emdb
    url, _ = site
    root = tmp_path / "site"
    (root / "EMD-1111" / "map").mkdir(parents=True)
    (root / "EMD-1111" / "map" / "emd_1111.map.gz").write_bytes(gzip.compress(b"not an MRC map" * 100))
    with pytest.raises(ValueError, match=r"emd_1111\.map\.gz: does not hold a valid file \(not a readable MRC"):
        fetch_emdb(1111, cache_dir=tmp_path / "c", base_url=url, progress=False)
    assert list((tmp_path / "c").iterdir()) == []                      # the archive was removed too
    good = write_micrograph(tmp_path / "m.mrc", np.arange(6, dtype=np.float32).reshape(2, 3))
    gz = gzip.compress(good.read_bytes())
    (root / "EMD-1111" / "map" / "emd_1111.map.gz").write_bytes(gz)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        fetch_emdb(1111, cache_dir=tmp_path / "c", base_url=url, progress=False, retries=0,
                   registry={"emd_1111.map.gz": "sha256:" + "0" * 64})
    reg = {"emd_1111.map.gz": "sha256:" + hashlib.sha256(gz).hexdigest()}
    m = fetch_emdb(1111, cache_dir=tmp_path / "c", base_url=url, progress=False, registry=reg)
    assert m.read_bytes() == good.read_bytes() and [p.name for p in (tmp_path / "c").iterdir()] == ["emd_1111.map"]
