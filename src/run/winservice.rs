//! Windows: `postern service install | uninstall | run`.
//!
//! `install` registers the service with the Service Control Manager (auto
//! start, LocalSystem, the configuration file given, logging to a file) and
//! sets its recovery actions to restart (5 s, 5 s, 30 s; the failure count
//! resets after a day, and an exit with an error counts as a failure too).
//! `run` is what the SCM starts: it reports Running and runs the supervisor
//! in this process ([`crate::run::supervise`]: the gateway is a child
//! process in a Job Object, restarted on any death while the service stays
//! Running; the SCM's restart is for the supervisor itself), and turns
//! Stop/Shutdown into a drain and ParamChange (`sc control postern
//! paramchange`) into a reload. Relative paths in the configuration are
//! taken from the configuration's directory. `install` also registers the
//! event source ([`crate::run::eventlog`]); `uninstall` removes it.

use crate::run::eventlog::Event;
use crate::run::signals::{Sig, Signals};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

pub const NAME: &str = "postern";

/// The configuration file `run` was given (the SCM's own arguments are not
/// ours; the command line is).
static CONFIG: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Registers the service to run `postern service run --config <config>`.
pub fn install(config: Option<PathBuf>) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let mut args = vec![OsString::from("service"), OsString::from("run")];
    if let Some(c) = config {
        args.push("--config".into());
        args.push(std::path::absolute(c)?.into_os_string());
    }
    let info = ServiceInfo {
        name: NAME.into(),
        display_name: "Postern SMTP gateway".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe()?,
        launch_arguments: args,
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager.create_service(&info, ServiceAccess::CHANGE_CONFIG)?;
    service.set_description("Relays mail between the Internet and internal hosts")?;
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(5), restart(30)]),
    })?;
    // Also restart after an exit with an error status (a failed start). Some
    // SCM implementations (Wine) lack this setting: crashes still restart.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        eprintln!("note: restart on non-crash failures not set: {e}");
    }
    if let Err(e) = crate::run::eventlog::register(&std::env::current_exe()?) {
        eprintln!("note: event source not registered: {e}");
    }
    println!("service {NAME} installed; start it with `sc start {NAME}`");
    Ok(())
}

/// Stops (if running) and removes the service.
pub fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        service.stop()?;
    }
    service.delete()?;
    if let Err(e) = crate::run::eventlog::unregister() {
        eprintln!("note: event source not removed: {e}");
    }
    println!("service {NAME} removed");
    Ok(())
}

/// Hands this process to the SCM; returns when the service has stopped.
pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(NAME, ffi_service_main)?;
    Ok(())
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_scm_args: Vec<OsString>) {
    if let Err(e) = run_service() {
        tracing::error!("service failed: {}", crate::error_text(&e));
    }
}

fn status(state: ServiceState, exit: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: match state {
            ServiceState::Running => {
                ServiceControlAccept::STOP
                    | ServiceControlAccept::SHUTDOWN
                    | ServiceControlAccept::PARAM_CHANGE
            }
            _ => ServiceControlAccept::empty(),
        },
        exit_code: match exit {
            0 => ServiceExitCode::Win32(0),
            n => ServiceExitCode::ServiceSpecific(n),
        },
        checkpoint: 0,
        wait_hint: Duration::from_secs(60),
        process_id: None,
    }
}

fn run_service() -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = service_control_handler::register(NAME, move |event| match event {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = tx.send(Sig::Stop);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            let _ = tx.send(Sig::Reload);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    handle.set_service_status(status(ServiceState::StartPending, 0))?;
    let path = CONFIG.get().cloned().flatten();
    // Services start in the system directory: relative paths in the
    // configuration (queue, keys) mean "beside the configuration file".
    if let Some(dir) = path.as_deref().and_then(|p| p.parent()) {
        if let Err(e) = std::env::set_current_dir(dir) {
            tracing::warn!(error = %e, "cannot change to the configuration's directory");
        }
    }
    let result = match crate::config::load(path.as_deref()) {
        Ok(loaded) => {
            crate::init_logging(&loaded.config.log, Some(&loaded.config.queue.path));
            handle.set_service_status(status(ServiceState::Running, 0))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let signals = Signals::new().with_channel(rx);
            let log_dir = loaded.config.queue.path.clone();
            crate::run::eventlog::report(Event::Started, "postern: the service started");
            rt.block_on(crate::run::supervise::run(loaded, signals, Some(log_dir)))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    match &result {
        Ok(()) => crate::run::eventlog::report(Event::Stopped, "postern: the service stopped"),
        Err(e) => crate::run::eventlog::report(
            Event::Failed,
            &format!("postern: the service failed: {}", crate::error_text(e)),
        ),
    }
    // A failure is reported as one, so the recovery actions restart us.
    let code = if result.is_ok() { 0 } else { 1 };
    handle.set_service_status(status(ServiceState::Stopped, code))?;
    result
}
