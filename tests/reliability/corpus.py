"""The bad-input corpus: files and HTTP/archive behaviours that real collections contain.

`local_cases(folder)` writes the file cases into a folder read by the `local` source;
`remote_cases(server, listing, cache)` registers archive and HTTP cases on a loopback server read
by the `objaverse_github` source (repository archives fetched over HTTP, members extracted with
the safe extractor). Each case names the outcome the build must record for that asset: an error
type, or "ok" where the input is in fact valid (decided here, asserted by the test).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import trimesh

from curation.sources.sample import build_sample

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FIVE_M = 5_000_000


@dataclass
class Case:
    name: str
    expect: str  # "ok" or the error_type recorded on the asset (by whichever stage fails first)
    stage: str = ""  # the stage expected to record it ("" = any / none for ok)
    note: str = ""


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _glb(mesh_or_scene) -> bytes:
    scene = mesh_or_scene if isinstance(mesh_or_scene, trimesh.Scene) else trimesh.Scene(mesh_or_scene)
    return trimesh.exchange.gltf.export_glb(scene)


def _obj(vertices, faces, header: str = "") -> bytes:
    lines = [header] if header else []
    lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return ("\n".join(lines) + "\n").encode()


def _ply(vertices: np.ndarray, faces: np.ndarray | None, claim_vertices: int | None = None) -> bytes:
    nv = len(vertices) if claim_vertices is None else claim_vertices
    head = f"ply\nformat binary_little_endian 1.0\nelement vertex {nv}\nproperty float x\nproperty float y\nproperty float z\n"
    if faces is not None:
        head += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
    head += "end_header\n"
    body = np.ascontiguousarray(vertices, "<f4").tobytes()
    if faces is not None:
        f = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        f["n"], f["i"] = 3, faces
        body += f.tobytes()
    return head.encode() + body


def five_million_triangles() -> bytes:
    """A wavy height field of 2*(n-1)^2 >= 5M triangles, as binary PLY (~95 MB), built in numpy."""
    n = 1583
    u = np.linspace(-1, 1, n, dtype=np.float32)
    x, y = np.meshgrid(u, u)
    z = 0.2 * np.sin(6 * x) * np.cos(6 * y)
    verts = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    quads = np.stack([a, a + 1, a + n, a + n + 1], axis=1)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [1, 3, 2]]]).astype(np.int32)
    assert len(faces) >= FIVE_M
    return _ply(verts, faces)


def _gltf(buffers_uri: str | None, data: bytes | None = None) -> bytes:
    """A one-triangle glTF whose buffer is `buffers_uri` (file name, data: URI, ...)."""
    pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], "<f4").tobytes()
    idx = np.array([0, 1, 2], "<u2").tobytes() + b"\0\0"
    blob = pos + idx
    uri = buffers_uri
    if uri is None:
        import base64

        uri = "data:application/octet-stream;base64," + base64.b64encode(data or blob).decode()
    doc = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"uri": uri, "byteLength": len(blob)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}],
    }
    return json.dumps(doc).encode()


def local_cases(folder: Path) -> list[tuple[Case, bytes | str]]:
    """(case, file name) pairs written into `folder`; the name may be bytes (non-UTF-8)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = build_sample("torus")  # a textured glb
    box = trimesh.creation.box()
    tri = np.array([[0, 1, 2]])
    nan_v = np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]])
    cases: list[tuple[Case, bytes, str | bytes]] = [
        (Case("truncated_glb", "corrupt_file", "normalize"), good[: len(good) // 2], "truncated.glb"),
        (Case("glb_header_only", "corrupt_file", "normalize"), good[:12], "header_only.glb"),
        (Case("glb_garbage_after_magic", "corrupt_file", "normalize"), good[:12] + bytes(range(256)) * 8, "garbage.glb"),
        (Case("random_bytes_glb", "corrupt_file", "normalize"), np.random.default_rng(1).bytes(4096), "random.glb"),
        (Case("glb_json_length_lies", "corrupt_file", "normalize"),
         good[:12] + struct.pack("<I", 0x7FFFFFF0) + good[16:], "json_len.glb"),
        (Case("empty_file", "empty_file", "ingest"), b"", "empty.glb"),
        (Case("gltf_missing_buffer", "corrupt_file", "normalize"), _gltf("missing.bin"), "missing_buffer.gltf"),
        (Case("gltf_buffer_path_escape", "corrupt_file", "normalize", "buffer uri ../../../../etc/hostname"),
         _gltf("../../../../../../etc/hostname"), "escape_buffer.gltf"),
        (Case("gltf_embedded_buffer", "ok", note="data: URI buffer is self-contained"), _gltf(None), "embedded.gltf"),
        (Case("gltf_invalid_json", "corrupt_file", "normalize"), b'{"asset": {"version": "2.0"', "invalid.gltf"),
        (Case("gltf_short_buffer", "corrupt_file", "normalize", "trimesh asserts on a buffer shorter than its accessors"), _gltf(None, b"\0" * 8), "short_buffer.gltf"),
        (Case("obj_missing_mtl_and_texture", "ok", note="renders untextured: the geometry is valid"),
         _obj(box.vertices, box.faces, "mtllib missing.mtl\nusemtl wood"), "no_texture.obj"),
        (Case("obj_nan_vertex", "non_finite_geometry", "normalize"), _obj(nan_v, tri), "nan.obj"),
        (Case("obj_inf_vertex", "non_finite_geometry", "normalize"),
         _obj(np.array([[0, 0, 0], [np.inf, 0, 0], [0, 1, 0]]), tri), "inf.obj"),
        (Case("ply_nan_vertex", "non_finite_geometry", "normalize"), _ply(nan_v, tri), "nan.ply"),
        (Case("ply_some_nan", "non_finite_geometry", "normalize"),
         _ply(np.vstack([box.vertices, [[np.nan, np.nan, np.nan]]]), np.vstack([box.faces, [[0, 1, 8]]])), "some_nan.ply"),
        (Case("zero_area_collinear", "empty_geometry", "normalize"),
         _obj(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]), np.array([[0, 1, 2], [1, 2, 3]])), "collinear.obj"),
        (Case("zero_area_one_point", "empty_geometry", "normalize"), _obj(np.zeros((3, 3)), tri), "point.obj"),
        (Case("empty_scene_glb", "empty_geometry", "normalize"), _glb(trimesh.Scene()), "empty_scene.glb"),
        (Case("obj_points_no_faces", "empty_geometry", "normalize"),
         _obj(box.vertices, np.zeros((0, 3), int)), "points.obj"),
        (Case("ply_points_no_faces", "empty_geometry", "normalize"), _ply(box.vertices, None), "points.ply"),
        (Case("ply_truncated_body", "corrupt_file", "normalize"), _ply(box.vertices, box.faces)[:-40], "truncated.ply"),
        (Case("ply_claims_1e12_vertices", "corrupt_file", "normalize", "must not allocate what the header claims"),
         _ply(box.vertices, box.faces, claim_vertices=10**12), "huge_claim.ply"),
        (Case("obj_face_index_out_of_range", "corrupt_file", "normalize"),
         b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99\n", "bad_index.obj"),
        (Case("obj_is_binary_garbage", "empty_geometry", "normalize"), np.random.default_rng(2).bytes(2048), "garbage.obj"),
        (Case("glb_extension_but_obj_text", "corrupt_file", "normalize"), _obj(box.vertices, box.faces), "really_obj.glb"),
        (Case("zip_named_glb", "corrupt_file", "normalize"), _zip({"a.glb": good}), "zipped.glb"),
        (Case("stl_truncated", "empty_geometry", "normalize", "trimesh reads the 100 bytes as an STL with no faces"),
         trimesh.exchange.stl.export_stl(box)[:100], "truncated.stl"),
        (Case("stl_ascii_valid", "ok"), trimesh.exchange.stl.export_stl_ascii(box).encode(), "ascii.stl"),
        (Case("off_valid", "ok"), trimesh.exchange.off.export_off(box).encode(), "valid.off"),
        (Case("extreme_coordinates_1e37", "ok", note="finite: normalization copes"),
         _obj(box.vertices * 1e37, box.faces), "huge_coords.obj"),
        (Case("unsupported_txt", "unsupported_format", "normalize"), b"just some notes\n", "readme.txt"),
        (Case("unsupported_fbx_garbage", "unsupported_format", "normalize"), b"Kaydara FBX Binary  \x00" + bytes(64), "model.fbx"),
        (Case("five_million_triangles", "ok", note="valid, large: succeeds within bounded memory"),
         five_million_triangles(), "five_million.ply"),
        (Case("non_utf8_file_name", "not_found", "ingest", "listed with an escaped name; the local source cannot map it back"), build_sample("cone"), b"bad-\xff\xfe-name.obj"),
        (Case("very_long_file_name", "ok"), build_sample("icosahedron"), "L" * 240 + ".obj"),
        (Case("very_deep_path", "ok"), build_sample("hull"), "/".join(["deep"] * 60) + "/hull.obj"),
    ]
    out = []
    for case, data, name in cases:
        bname = name if isinstance(name, bytes) else name.encode()
        path = folder / os.fsdecode(bname)  # a non-UTF-8 name round-trips through surrogateescape
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append((case, name))
    return out


def _zip(entries: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            zi = zipfile.ZipInfo(name)
            zi.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                zi.external_attr = modes[name] << 16
            z.writestr(zi, data)
    return buf.getvalue()


def _tar(members: list[tarfile.TarInfo], datas: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for m in members:
            d = datas.get(m.name)
            if d is not None:
                m.size = len(d)
                t.addfile(m, io.BytesIO(d))
            else:
                t.addfile(m)
    return buf.getvalue()


def _ti(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = type_, linkname, 0o644
    return ti


# -- a loopback HTTP server ------------------------------------------------------------------------
class Server:
    """path -> (status, body, headers) or "stall" / "drop"; everything else 404. 127.0.0.1 only."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.hits: dict[str, int] = {}
        self.stop = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                outer.hits[path] = outer.hits.get(path, 0) + 1
                r = outer.routes.get(path)
                if r == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"PK")
                    self.wfile.flush()
                    outer.stop.wait(4)
                    self.close_connection = True
                    return
                if r == "drop":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"PK\x03\x04" + bytes(500))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status, body, headers = r if isinstance(r, tuple) else (404, b"not found", {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def remote_cases(server: Server) -> tuple[list[Case], list[dict]]:
    """Cases served as GitHub repository archives; returns (cases, listing rows)."""
    good = build_sample("star")
    root = f"repo-{COMMIT}"
    rows: list[dict] = []
    cases: list[Case] = []

    def add(case: Case, repo: str, path: str, archive: object | None, listed_sha: str | None = None,
            member_bytes: bytes = good) -> None:
        if archive is not None:
            server.routes[f"/org/{repo}/zip/{COMMIT}"] = archive if isinstance(archive, (str, tuple)) else (200, archive, {})
        fid = f"https://github.com/org/{repo}/blob/{COMMIT}/{path}"
        # cases that never reach verification get a unique listed identity (the listing dedups by sha256)
        ident = listed_sha or (sha(member_bytes) if case.expect == "ok" or case.stage == "normalize" else sha(case.name.encode()))
        rows.append({"sha256": ident, "file_identifier": fid, "aesthetic_score": 5.0,
                     "captions": json.dumps([case.name])})
        cases.append(case)

    link = stat.S_IFLNK | 0o777
    add(Case("github_valid_member", "ok"), "good", "models/star.glb", _zip({f"{root}/models/star.glb": good}))
    add(Case("sha_mismatch", "checksum_mismatch", "ingest"), "tampered", "models/star.glb",
        _zip({f"{root}/models/star.glb": good}), listed_sha=sha(b"what the listing promised"))
    add(Case("zip_slip_member", "unsafe_archive", "ingest"), "slip", "../../evil.glb", _zip({f"{root}/../../evil.glb": good}))
    add(Case("zip_absolute_member", "not_found", "ingest", "an absolute name never matches a repository path"),
        "absolute", "tmp/evil_abs.glb", _zip({f"{root}/README.md": b"hi", "/tmp/evil_abs.glb": good}))
    add(Case("zip_symlink_escape", "unsafe_archive", "ingest"), "symlink", "models/link.glb",
        _zip({f"{root}/README.md": b"hi", f"{root}/models/link.glb": b"../../../../../etc/passwd"},
             {f"{root}/models/link.glb": link}))
    add(Case("zip_bomb", "unsafe_archive", "ingest"), "bomb", "models/bomb.glb",
        _zip({f"{root}/models/bomb.glb": bytes(300 << 20)}), member_bytes=b"bomb")
    add(Case("zip_deep_nesting", "unsafe_archive", "ingest"), "deep", "/".join(["d"] * 40) + "/x.glb",
        _zip({f"{root}/" + "/".join(["d"] * 40) + "/x.glb": good}))
    add(Case("tar_symlink_escape", "unsafe_archive", "ingest"), "tarlink", "models/evil.glb",
        _tar([_ti(f"{root}/README.md"), _ti(f"{root}/models/evil.glb", tarfile.SYMTYPE, "../../../../etc/passwd")],
             {f"{root}/README.md": b"hi"}))
    add(Case("tar_hardlink_escape", "unsafe_archive", "ingest"), "tarhard", "models/evil.glb",
        _tar([_ti(f"{root}/README.md"), _ti(f"{root}/models/evil.glb", tarfile.LNKTYPE, "../../../etc/passwd")],
             {f"{root}/README.md": b"hi"}))
    add(Case("tar_device_member", "unsafe_archive", "ingest"), "tardev", "models/dev.glb",
        _tar([_ti(f"{root}/README.md"), _ti(f"{root}/models/dev.glb", tarfile.CHRTYPE)], {f"{root}/README.md": b"hi"}))
    add(Case("nested_archive_member", "unsupported_format", "normalize", "extracted as a file, never recursed"),
        "nested", "models/inner.zip", _zip({f"{root}/models/inner.zip": _zip({"evil/../../x.glb": good})}),
        member_bytes=_zip({"evil/../../x.glb": good}))
    add(Case("member_not_in_archive", "not_found", "ingest"), "missing", "models/nope.glb", _zip({f"{root}/models/star.glb": good}))
    add(Case("corrupt_archive", "corrupt_archive", "ingest"), "corrupt", "models/star.glb",
        (lambda z: z[:60] + bytes(200) + z[260:])(_zip({f"{root}/models/star.glb": good * 4})))
    add(Case("not_an_archive", "corrupt_archive", "ingest"), "notzip", "models/star.glb", b"<html>rate limit page</html>" * 10)
    add(Case("http_404", "not_found", "ingest"), "gone", "models/star.glb", None)
    add(Case("http_403", "auth_required", "ingest"), "private", "models/star.glb", (403, b"denied", {}))
    add(Case("http_429", "rate_limited", "ingest"), "throttled", "models/star.glb", (429, b"slow down", {"Retry-After": "0"}))
    add(Case("http_500", "http_error", "ingest"), "broken", "models/star.glb", (500, b"oops", {}))
    add(Case("http_stall", "timeout", "ingest"), "stalled", "models/star.glb", "stall")
    add(Case("http_drop_mid_body", "connection_error", "ingest"), "dropped", "models/star.glb", "drop")
    return cases, rows
