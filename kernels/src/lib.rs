//! The offload engine: batch operations (AES-256-GCM seal/open, LZ4 compress/decompress)
//! with a CPU implementation and a CUDA implementation whose `.cu` sources are compiled by
//! NVRTC at start-up through `cudarc`. The data plane calls only the batch API.
//!
//! The engines arrive with the data-plane and GPU-offload issues.

#![deny(unsafe_code)]
