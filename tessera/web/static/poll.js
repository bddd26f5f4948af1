// Polling that pauses while the tab is hidden and resumes (at once) when it is shown again.

export function poll(fn, intervalMs) {
  let timer = null;
  let stopped = false;
  let running = false;
  let again = false;

  const visible = () => document.visibilityState !== "hidden";

  async function tick() {
    timer = null;
    if (stopped || !visible()) return;
    running = true;
    try {
      await fn();
    } catch (err) {
      console.debug("poll", err);
    } finally {
      running = false;
    }
    schedule(again ? 0 : intervalMs);
    again = false;
  }

  function schedule(ms) {
    if (stopped || timer !== null || !visible()) return;
    timer = setTimeout(tick, ms);
  }

  function onVisibility() {
    if (visible()) {
      if (!running) {
        clearTimeout(timer);
        timer = null;
        tick();
      }
    } else {
      clearTimeout(timer);
      timer = null;
    }
  }

  document.addEventListener("visibilitychange", onVisibility);
  tick();
  return {
    /** Refresh now (or right after the refresh under way). */
    now() {
      if (running) {
        again = true;
        return;
      }
      clearTimeout(timer);
      timer = null;
      tick();
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    },
  };
}
