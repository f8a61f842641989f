import torch

from edgelab import counts, models, sizes


def test_fp32_state_dict_takes_about_four_bytes_per_parameter():
    m = models.student()
    n_bytes = len(sizes.state_dict_bytes(m))
    assert 4 * counts.count_params(m) < n_bytes < 4 * counts.count_params(m) * 1.1


def test_gzip_shrinks_zeros_but_the_raw_size_stays():
    m = models.student()
    raw, gz = sizes.artifact_sizes(sizes.state_dict_bytes(m))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(torch.rand_like(p) > 0.9)
    raw0, gz0 = sizes.artifact_sizes(sizes.state_dict_bytes(m))
    assert raw0 == raw and gz0 < gz / 3


def test_gzip_bytes_are_a_valid_gzip_file_of_the_whole_artifact():
    import gzip

    blob = sizes.state_dict_bytes(models.student())
    packed = sizes.gzip_compress([blob], chunk_bytes=100_000)  # several members
    assert gzip.decompress(packed) == blob
    assert sizes.artifact_sizes(blob) == (len(blob), len(sizes.gzip_compress([blob])))


def test_saved_sizes_equal_the_sizes_of_the_saved_bytes_without_keeping_them(monkeypatch):
    m = models.student()
    for chunk in (sizes.GZIP_CHUNK, 100_000):  # one gzip member, then several
        monkeypatch.setattr(sizes, "GZIP_CHUNK", chunk)
        blob = sizes.state_dict_bytes(m)
        assert sizes.saved_sizes(m) == (len(blob), len(sizes.gzip_compress([blob], chunk)))
        assert sizes.saved_size(m) == len(blob)


def test_gzip_compress_takes_tensors_of_any_dtype_as_their_raw_bytes():
    import gzip

    parts = [torch.randn(5, 3), torch.ones(4, dtype=torch.bfloat16), torch.tensor(2.0), b"end"]
    raw = b"".join(p if isinstance(p, bytes) else p.reshape(-1).view(torch.uint8).numpy().tobytes()
                   for p in parts)
    assert gzip.decompress(sizes.gzip_compress(parts)) == raw
    assert sizes.gzip_size(parts) == len(sizes.gzip_compress(parts))
