//! safetensors reading and writing (f32, f64, bf16, f16, i64), memory-mapped loads, atomic saves,
//! and strict / non-strict loading of a [`ParamStore`] with a report of what did not match.
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Error, ParamStore, Result, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::I64 => StDtype::I64,
    }
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), msg: msg.into() }
}

/// Writes `tensors` to `path` as safetensors, converting float tensors to `dtype` when given.
/// The file is written next to `path` under a temporary name and renamed into place, so a crash
/// mid-save leaves any previous file intact.
pub fn save(tensors: &[(String, Tensor)], path: impl AsRef<Path>, dtype: Option<DType>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let path = path.as_ref();
    let mut blobs: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let target = match dtype {
            Some(d) if t.dtype().is_float() => d,
            _ => t.dtype(),
        };
        let t = &t.detach().to_device(crate::Device::Cpu)?;
        let l = t.layout();
        let data = t.storage().cpu().gather_as(&l.shape, &l.strides, l.offset, target);
        blobs.push((name.clone(), target, t.shape().to_vec(), data.to_le_bytes()));
    }
    let views = blobs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(st_dtype(*d), s.clone(), b).map(|v| (n.clone(), v)).map_err(|e| Error::Key {
                path: path.to_path_buf(),
                key: n.clone(),
                msg: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &metadata).map_err(|e| file_err(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp: PathBuf = path.to_path_buf();
    let fname = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    tmp.set_file_name(format!(".{fname}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn view_to_tensor(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Tensor> {
    let bytes = v.data();
    let key_err = |msg: String| Error::Key { path: path.to_path_buf(), key: name.to_string(), msg };
    let s = match v.dtype() {
        StDtype::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
        StDtype::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec(bytes)),
        StDtype::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
        StDtype::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(bytes)),
        StDtype::I64 => CpuStorage::I64(bytemuck::pod_collect_to_vec(bytes)),
        StDtype::I32 => CpuStorage::I64(bytemuck::pod_collect_to_vec::<u8, i32>(bytes).into_iter().map(i64::from).collect()),
        other => return Err(key_err(format!("unsupported dtype {other:?} (supported: f32, f64, bf16, f16, i64, i32)"))),
    };
    Tensor::from_storage(Storage::Cpu(s), v.shape()).map_err(|e| key_err(e.to_string()))
}

/// A memory-mapped safetensors file; tensors are copied out on request.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header. Truncated or corrupted files are an error naming
    /// the file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let f = std::fs::File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        // SAFETY: the map is read-only; we rely on the file not being truncated while mapped,
        // as every mmap-based loader does.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| Error::Io { path: path.clone(), source })?;
        SafeTensors::deserialize(&mmap).map_err(|e| file_err(&path, format!("not a valid safetensors file: {e}")))?;
        Ok(SafetensorsFile { path, mmap })
    }
    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }
    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.parsed().names().into_iter().cloned().collect();
        v.sort();
        v
    }
    /// `(dtype name, shape)` of one tensor without reading its data.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = self.parsed();
        let v = st.tensor(name).map_err(|_| Error::Key { path: self.path.clone(), key: name.into(), msg: "not in file".into() })?;
        Ok(v.shape().to_vec())
    }
    /// Reads one tensor.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let st = self.parsed();
        let v = st.tensor(name).map_err(|_| Error::Key { path: self.path.clone(), key: name.into(), msg: "not in file".into() })?;
        view_to_tensor(&self.path, name, &v)
    }
    /// Reads every tensor.
    pub fn load_all(&self) -> Result<BTreeMap<String, Tensor>> {
        let st = self.parsed();
        st.tensors().iter().map(|(n, v)| Ok((n.clone(), view_to_tensor(&self.path, n, v)?))).collect()
    }
    /// The file's `__metadata__` map, if any.
    pub fn metadata(&self) -> Option<HashMap<String, String>> {
        SafeTensors::read_metadata(&self.mmap).ok().and_then(|(_, m)| m.metadata().clone())
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every tensor of a safetensors file.
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    SafetensorsFile::open(path)?.load_all()
}

/// What a (non-strict) load did not match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters loaded from the file.
    pub loaded: Vec<String>,
    /// Parameters of the store absent from the file.
    pub missing: Vec<String>,
    /// Tensors of the file the store does not have.
    pub unexpected: Vec<String>,
    /// `(name, store shape, file shape)` where the shapes differ (not loaded).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "loaded {}, missing {:?}, unexpected {:?}, mismatched shapes {:?}", self.loaded.len(), self.missing, self.unexpected, self.mismatched)
    }
}

impl ParamStore {
    /// Saves every parameter (optionally converting floats to `dtype`), atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>, dtype: Option<DType>) -> Result<()> {
        let list: Vec<(String, Tensor)> = self.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        save(&list, path, dtype, None)
    }

    /// Saves only the parameters that require grad (e.g. Flamingo's trainable parts).
    pub fn save_trainable_safetensors(&self, path: impl AsRef<Path>, dtype: Option<DType>) -> Result<()> {
        save(&self.trainable(), path, dtype, None)
    }

    /// Loads values into the existing parameters (converting dtypes). With `strict`, any missing,
    /// unexpected or mis-shaped key is an error and nothing is changed; otherwise what matches is
    /// loaded and the rest reported.
    pub fn load_safetensors(&self, path: impl AsRef<Path>, strict: bool) -> Result<LoadReport> {
        let file = SafetensorsFile::open(path.as_ref())?;
        let names = file.names();
        let mut report = LoadReport::default();
        let mut todo = Vec::new();
        for (name, t) in self.iter() {
            if names.binary_search(name).is_err() {
                report.missing.push(name.clone());
                continue;
            }
            let shape = file.shape(name)?;
            if shape != t.shape() {
                report.mismatched.push((name.clone(), t.shape().to_vec(), shape));
                continue;
            }
            todo.push((name.clone(), t.clone()));
        }
        report.unexpected = names.into_iter().filter(|n| self.get(n).is_none()).collect();
        if strict && !report.is_clean() {
            return Err(file_err(file.path(), format!("strict load failed: {report}")));
        }
        for (name, t) in todo {
            let src = file.get(&name)?;
            if !src.dtype().is_float() && t.dtype().is_float() {
                return Err(Error::Key {
                    path: file.path().to_path_buf(),
                    key: name,
                    msg: format!("dtype {} cannot load into a {} parameter", src.dtype(), t.dtype()),
                });
            }
            t.assign(&src)?;
            report.loaded.push(name);
        }
        Ok(report)
    }
}
