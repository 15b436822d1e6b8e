//! JSONL manifests. An interleaved document per line: `{"text": "... <image> ...", "images":
//! ["a.png", ...]}` (paths relative to the manifest's folder); a pair per line:
//! `{"image": "a.jpg", "caption": "..."}`. A bad record — malformed JSON, a missing or undecodable
//! image, images and `<image>` markers that do not pair up — is reported with its line number and
//! skipped; every good record is kept.
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A decoded interleaved document: its text and one image `[3, size, size]` per `<image>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub line: usize,
    pub text: String,
    pub images: Vec<Vec<f32>>,
}

/// A skipped record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Deserialize)]
struct RawDoc {
    text: String,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
struct RawPair {
    image: String,
    caption: String,
}

/// Decodes an image file (PNG, JPEG), resizes it to `size`×`size` and returns `[3, size, size]`
/// with values in [0, 1].
pub fn load_image(path: &Path, size: usize) -> Result<Vec<f32>, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rgb = image::imageops::resize(&img.to_rgb8(), size as u32, size as u32, image::imageops::FilterType::Triangle);
    let mut out = vec![0.0f32; 3 * size * size];
    for (x, y, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            out[(c * size + y as usize) * size + x as usize] = p[c] as f32 / 255.0;
        }
    }
    Ok(out)
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.to_string())).collect())
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads an interleaved-document manifest, decoding images at `size`. Returns the good documents
/// (in file order) and the skipped records; only an unreadable manifest file is an error.
pub fn read_documents(path: &Path, size: usize) -> Result<(Vec<Document>, Vec<BadRecord>), String> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (line, text) in read_lines(path)? {
        let raw: RawDoc = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                bad.push(BadRecord { line, reason: format!("malformed JSON: {e}") });
                continue;
            }
        };
        let markers = raw.text.matches("<image>").count();
        if markers != raw.images.len() {
            bad.push(BadRecord { line, reason: format!("{} images but {markers} <image> markers", raw.images.len()) });
            continue;
        }
        let images: Result<Vec<Vec<f32>>, String> = raw.images.iter().map(|p| load_image(&resolve(base, p), size)).collect();
        match images {
            Ok(images) => good.push(Document { line, text: raw.text, images }),
            Err(e) => bad.push(BadRecord { line, reason: e }),
        }
    }
    Ok((good, bad))
}

/// Reads a pairs manifest into documents `<image> caption <|endofchunk|>`.
pub fn read_pairs(path: &Path, size: usize) -> Result<(Vec<Document>, Vec<BadRecord>), String> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (line, text) in read_lines(path)? {
        match serde_json::from_str::<RawPair>(&text) {
            Err(e) => bad.push(BadRecord { line, reason: format!("malformed JSON: {e}") }),
            Ok(r) => match load_image(&resolve(base, &r.image), size) {
                Ok(img) => good.push(Document { line, text: format!("<image> {} <|endofchunk|>", r.caption), images: vec![img] }),
                Err(e) => bad.push(BadRecord { line, reason: e }),
            },
        }
    }
    Ok((good, bad))
}
