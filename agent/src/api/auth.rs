//! The kubelet server's delegated authentication and authorisation: bearer tokens through TokenReview and requests
//! through SubjectAccessReview, as kubelet's webhook authenticator and authorizer ask the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// Who made a request, as the authenticators found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks to do to the node: `nodes/<subresource>` with a verb.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAttributes {
    pub verb: String,
    pub subresource: String,
    pub node_name: String,
}

/// The token's user, or `None` when the API server says it is not authenticated.
pub async fn review_token(client: &kube::Client, token: &str) -> Result<Option<UserInfo>, kube::Error> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review =
        TokenReview { spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: None }, ..Default::default() };
    let answer = api.create(&PostParams::default(), &review).await?;
    let Some(status) = answer.status else { return Ok(None) };
    if status.authenticated != Some(true) {
        return Ok(None);
    }
    let user = status.user.unwrap_or_default();
    Ok(Some(UserInfo {
        name: user.username.unwrap_or_default(),
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    }))
}

/// Whether the user may do `attrs` (kubelet's webhook authorizer: resource `nodes` in the core group, v1).
pub async fn review_access(
    client: &kube::Client,
    user: &UserInfo,
    attrs: &NodeAttributes,
) -> Result<bool, kube::Error> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: None,
                verb: Some(attrs.verb.clone()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some("nodes".into()),
                subresource: Some(attrs.subresource.clone()),
                name: Some(attrs.node_name.clone()),
                ..Default::default()
            }),
            non_resource_attributes: None,
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
