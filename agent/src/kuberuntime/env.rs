//! The container's environment: the objects and services it reads are fetched, then `pods::env` builds it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::KubeRuntime;
use crate::kubetypes::annotations::{CONFIG_SOURCE_ANNOTATION, FILE_SOURCE};
use crate::kubetypes::env::{self, ContainerEnv, EnvSources};
use crate::kubetypes::events::EventType;
use crate::kubetypes::spec;
use crate::volumes::fetch_env_objects;

impl KubeRuntime {
    /// kubelet's `makeEnvironmentVariables`; an error is the `CreateContainerConfigError` message.
    pub(super) async fn make_environment(
        &self,
        pod: &Pod,
        container: &Container,
        pod_ips: &[String],
    ) -> Result<Vec<(String, String)>, String> {
        let objects = self.volumes.objects();
        let is_static = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
            .is_some_and(|s| s == FILE_SOURCE);
        let service_env = match objects {
            None => Vec::new(),
            Some(api) => match api.services() {
                Some(services) => {
                    let links = spec::spec(pod).enable_service_links.unwrap_or(true);
                    env::service_env(&services, spec::namespace(pod), links)
                }
                None if is_static => Vec::new(),
                None => return Err("services have not yet been read at least once, cannot construct envvars".into()),
            },
        };
        let (config_maps, secrets) = match objects {
            Some(api) => fetch_env_objects(api, spec::uid(pod), spec::namespace(pod), container).await,
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let sources = EnvSources {
            node_name: &self.node_name,
            host_ips: &self.host_ips,
            pod_ips,
            allocatable: self.volumes.allocatable,
            config_maps: objects.map(|_| &config_maps),
            secrets: objects.map(|_| &secrets),
            service_env: &service_env,
        };
        let ContainerEnv { envs, invalid_names } = env::container_envs(pod, container, &sources)?;
        for message in invalid_names {
            self.events.record(pod, None, EventType::Warning, env::EVENT_INVALID_ENVIRONMENT_VARIABLE_NAMES, message);
        }
        Ok(envs)
    }
}
