//! Test support shared by the integration tests in `it/`: a mock Hugging Face Hub. The test stage
//! executable they drive is `src/bin/ft-fake-stage.rs`.

pub mod mock_hub;
