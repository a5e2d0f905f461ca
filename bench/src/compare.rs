//! Side-by-side comparison (placeholder while being written).

/// `pktgen compare` arguments.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

/// Errors of the comparison.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Not yet.
    #[error("compare is not implemented yet")]
    NotYet,
}

/// Runs the comparison.
pub fn compare(_a: &CompareArgs) -> Result<(), CompareError> {
    Err(CompareError::NotYet)
}
