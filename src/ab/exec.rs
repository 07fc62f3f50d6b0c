//! Running boot-loader tools through a trait, so the same backend code runs the real tools, the tools on plain files in tests, and recorders in unit tests.
