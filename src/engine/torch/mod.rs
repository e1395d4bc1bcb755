//! The torch engine: the image's own python3 and PyTorch, driven by an embedded worker script.

use std::collections::BTreeMap;

use super::{CaseOutput, Engine};
use crate::case::{Case, Device};
use crate::error::CaseError;

pub struct TorchEngine {
    device: Device,
    gpus: Vec<usize>,
}

impl TorchEngine {
    pub fn new(device: Device, gpus: &[usize]) -> Self {
        TorchEngine {
            device,
            gpus: gpus.to_vec(),
        }
    }
}

impl Engine for TorchEngine {
    fn env(&mut self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "engine".to_string(),
            format!("torch on {} {:?}", self.device.as_str(), self.gpus),
        )])
    }

    fn run(&mut self, _case: &Case) -> Result<CaseOutput, CaseError> {
        Err(CaseError::skipped("the torch engine is being written"))
    }
}
