//! Times every EC2 and Auto Scaling call (retries included) into
//! `gateway_agent_api_call_duration_seconds{action, result}`: an SDK interceptor, so no call
//! site can forget it.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

#[derive(Debug)]
pub struct Timing;

#[derive(Debug, Clone)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Timing {
    fn name(&self) -> &'static str {
        "gateway-agent-timing"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Started(at)) = cfg.load::<Started>().cloned() else {
            return Ok(());
        };
        let action = cfg
            .load::<Metadata>()
            .map_or_else(|| "unknown".to_owned(), |m| m.name().to_owned());
        let result = match context.output_or_error() {
            Some(Ok(_)) => "ok",
            _ => "error",
        };
        crate::metrics::observe(
            "gateway_agent_api_call_duration_seconds",
            &[("action", action.as_str()), ("result", result)],
            at.elapsed().as_secs_f64(),
        );
        Ok(())
    }
}
