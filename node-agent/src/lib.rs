pub mod install_cni;
