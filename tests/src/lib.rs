//! Integration tests live in `it/`; `src/bin/` holds the test stage executable they drive.
