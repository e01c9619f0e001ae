
pub mod cri;
pub mod containerd;
pub mod apiserver;
