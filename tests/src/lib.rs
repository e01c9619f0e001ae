pub mod apiserver;
pub mod containerd;
pub mod cri;
pub mod fixtures;
pub mod kubelet;
pub mod netns_cluster;
pub mod poll;
