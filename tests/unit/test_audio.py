import numpy as np
import pytest
import soundfile as sf

from lacoat.data.audio import audio_info, cut_windows, read_audio
from lacoat.errors import AudioReadError
from tests.helpers import write_tone


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_read_formats_mono_and_rate(tmp_path, ext):
    path = tmp_path / f"tone.{ext}"
    write_tone(path, seconds=0.5, sample_rate=16000)
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 1
    assert 0.4 < np.abs(wave).max() < 0.6


def test_stereo_is_averaged(tmp_path):
    path = tmp_path / "stereo.wav"
    data = write_tone(path, channels=2)
    wave = read_audio(path, 16000)
    np.testing.assert_allclose(wave, data.mean(axis=1), atol=1e-4)


def test_resampling_keeps_pitch(tmp_path):
    path = tmp_path / "tone.wav"
    write_tone(path, seconds=1.0, sample_rate=16000, freq=1000.0)
    wave = read_audio(path, 48000)
    assert len(wave) == 48000
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 48000 / len(wave)
    assert abs(peak_hz - 1000.0) < 2.0


def test_cut_windows_pads_short_clip():
    w = cut_windows(np.ones(30, dtype=np.float32), window_samples=100)
    assert w.waveform.shape == (1, 100)
    assert w.valid_samples.tolist() == [30]
    assert w.waveform[0, :30].sum() == 30 and w.waveform[0, 30:].sum() == 0


def test_cut_windows_long_clip_and_last_window():
    wave = np.arange(250, dtype=np.float32)
    w = cut_windows(wave, 100)
    assert w.waveform.shape == (3, 100)
    assert w.valid_samples.tolist() == [100, 100, 50]
    np.testing.assert_array_equal(w.waveform.reshape(-1)[:250], wave)
    assert cut_windows(wave, 100, min_last_window=0.6).valid_samples.tolist() == [100, 100]
    assert cut_windows(np.ones(100, np.float32), 100).valid_samples.tolist() == [100]


def test_cut_windows_max_windows_deterministic_without_rng():
    wave = np.arange(500, dtype=np.float32)
    w = cut_windows(wave, 100, max_windows=2)
    np.testing.assert_array_equal(w.waveform.reshape(-1), wave[:200])
    firsts = {int(cut_windows(wave, 100, 2, rng=np.random.default_rng(s)).waveform[0, 0]) for s in range(40)}
    assert firsts == {0, 100, 200, 300}  # every valid run of two windows, nothing past the end


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioReadError, match="not found: '.*nothere.wav'"):
        read_audio(tmp_path / "nothere.wav", 16000)


def test_empty_file_names_it(tmp_path):
    path = tmp_path / "empty clip.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioReadError, match="empty \\(0 bytes\\): '.*empty clip.wav'"):
        read_audio(path, 16000)


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(AudioReadError, match="broken.wav"):
        audio_info(path)


def test_zero_sample_file(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioReadError, match="no samples: '.*silent.wav'"):
        read_audio(path, 16000)


def test_truncated_wav_data_is_an_error_or_short(tmp_path):
    path = tmp_path / "cut.wav"
    write_tone(path, seconds=1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[:60])  # header claims 1 s, 16 bytes of data remain
    try:
        wave = read_audio(path, 16000)
    except AudioReadError as err:
        assert "cut.wav" in str(err)
    else:
        assert len(wave) < 16000


def quiet_then_burst(path, lead_s: float, sr: int = 16000) -> np.ndarray:
    """``lead_s`` of faint noise, then 0.5 s of a loud tone, then faint noise; written to ``path``."""
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(2 * sr).astype(np.float32) * 0.003
    start = int(lead_s * sr)
    wave[start : start + sr // 2] += 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    sf.write(str(path), wave, sr, subtype="FLOAT")
    return wave


def test_training_start_shift_skips_only_the_quiet_lead(tmp_path):
    from lacoat.data.datasets import AudioLoader, quiet_lead

    sr = 16000
    wave = quiet_then_burst(tmp_path / "a.wav", lead_s=0.1)
    lead = quiet_lead(read_audio(tmp_path / "a.wav", sr), sr)
    assert int(0.09 * sr) <= lead <= int(0.1 * sr)  # the 10-ms frame holding the onset is sounding
    loader = AudioLoader(sr, 4.0, max_shift_seconds=0.32)
    skipped = set()
    for seed in range(40):
        w = loader.load(str(tmp_path / "a.wav"), np.random.default_rng(seed))
        n = int(w.valid_samples.sum())
        skipped.add(len(wave) - n)
        np.testing.assert_allclose(w.waveform.reshape(-1)[:n], wave[len(wave) - n :], atol=1e-6)
    assert max(skipped) <= lead  # never into the tone, though 0.32 s were allowed
    assert min(skipped) < 0.2 * lead and max(skipped) > 0.8 * lead  # the whole quiet lead is used
    assert len(skipped) > 20  # a random start each read
    # evaluation (no rng) and the default (no shift) read the clip from its first sample
    assert loader.load(str(tmp_path / "a.wav")).valid_samples.sum() == len(wave)
    plain = AudioLoader(sr, 4.0)
    assert plain.load(str(tmp_path / "a.wav"), np.random.default_rng(0)).valid_samples.sum() == len(wave)
    # a longer quiet lead: the shift stops at max_shift_seconds
    quiet_then_burst(tmp_path / "b.wav", lead_s=0.8)
    reads = [loader.load(str(tmp_path / "b.wav"), np.random.default_rng(s)) for s in range(40)]
    most = max(len(wave) - int(w.valid_samples.sum()) for w in reads)
    assert int(0.28 * sr) < most <= int(0.32 * sr)
