//! A gRPC health server for the grpc probe tests: answers `grpc.health.v1.Health/Check` with SERVING for the
//! overall health ("") and the services named on the command line, SERVICE_UNKNOWN for any other.
//! Usage: `grpc-health-server PORT [SERVICE...]`. The harness packages it into an image (`grpc_image`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use rkubelet::probes::grpc::{HealthCheckRequest, HealthCheckResponse, ServingStatus, CHECK_PATH};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};

#[derive(Clone)]
struct Health {
    serving: Vec<String>,
}

impl NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl Service<http::Request<Body>> for Health {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let serving = self.serving.clone();
        Box::pin(async move {
            if req.uri().path() != CHECK_PATH {
                return Ok(tonic::Status::unimplemented("only Check is served").into_http());
            }
            let codec = tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            Ok(Grpc::new(codec).unary(Check { serving }, req).await)
        })
    }
}

struct Check {
    serving: Vec<String>,
}

impl UnaryService<HealthCheckRequest> for Check {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<tonic::Response<HealthCheckResponse>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let service = req.into_inner().service;
        let status = if service.is_empty() || self.serving.contains(&service) {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        Box::pin(async move { Ok(tonic::Response::new(HealthCheckResponse { status: status as i32 })) })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("usage: grpc-health-server PORT [SERVICE...]")?.parse()?;
    let serving: Vec<String> = args.collect();
    println!("serving grpc.health.v1 on :{port} for {serving:?}");
    tonic::transport::Server::builder()
        .add_service(Health { serving })
        .serve(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
        .await?;
    Ok(())
}
