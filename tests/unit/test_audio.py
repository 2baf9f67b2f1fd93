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
