//! Process signals as events: SIGTERM/SIGINT (Ctrl-C) stop, SIGHUP reloads;
//! on Windows, Ctrl-C and the Service Control Manager (through a channel).
//! The handlers are installed once, in [`Signals::new`], so a signal that
//! arrives between two waits is not lost.

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Stop,
    Reload,
}

pub struct Signals {
    /// Requests from elsewhere (the Windows Service Control Manager).
    external: Option<tokio::sync::mpsc::UnboundedReceiver<Sig>>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                external: None,
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals { external: None }
    }

    /// Also takes requests sent on `rx`.
    pub fn with_channel(mut self, rx: tokio::sync::mpsc::UnboundedReceiver<Sig>) -> Signals {
        self.external = Some(rx);
        self
    }

    /// The next stop or reload request.
    pub async fn next(&mut self) -> Sig {
        let external = async {
            match &mut self.external {
                // A closed channel stops: nobody is left to ask.
                Some(rx) => rx.recv().await.unwrap_or(Sig::Stop),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = external => s,
            s = Self::os(
                #[cfg(unix)]
                &mut self.term,
                #[cfg(unix)]
                &mut self.hup,
            ) => s,
        }
    }

    async fn os(
        #[cfg(unix)] term: &mut Option<tokio::signal::unix::Signal>,
        #[cfg(unix)] hup: &mut Option<tokio::signal::unix::Signal>,
    ) -> Sig {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(term) => Sig::Stop,
                _ = tokio::signal::ctrl_c() => Sig::Stop,
                _ = recv(hup) => Sig::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Sig::Stop
        }
    }
}
