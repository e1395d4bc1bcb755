//! The native CUDA engine (cuBLAS, cuBLASLt, NCCL, NVRTC through cudarc's dynamic loading).

use std::collections::BTreeMap;

use super::{CaseOutput, Engine};
use crate::case::Case;
use crate::error::CaseError;

pub struct CudaEngine {
    gpus: Vec<usize>,
}

impl CudaEngine {
    pub fn new(gpus: &[usize]) -> Self {
        CudaEngine { gpus: gpus.to_vec() }
    }
}

impl Engine for CudaEngine {
    fn env(&mut self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("engine".to_string(), "native-cuda".to_string()),
            ("gpus".to_string(), format!("{:?}", self.gpus)),
        ])
    }

    fn run(&mut self, _case: &Case) -> Result<CaseOutput, CaseError> {
        Err(CaseError::skipped("the native CUDA engine is being written"))
    }
}
