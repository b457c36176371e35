// Tollgate sends a reader back to <article>#tollgate_token=<token>, or, when it has no access,
// to <article>#tollgate_error=login_required (or access_denied) with no token. A fragment never
// reaches a server, so this moves the token into the newspaper's session (POST /session, which
// verifies it) and reloads the page without it; an error is only taken out of the address.
(function () {
  "use strict";
  var clean = window.location.pathname + window.location.search;
  if (/(?:^#|&)tollgate_error=/.test(window.location.hash)) {
    window.history.replaceState(null, "", clean);
    return;
  }
  var match = /(?:^#|&)tollgate_token=([A-Za-z0-9_.-]+)/.exec(window.location.hash);
  if (!match) {
    return;
  }
  document.documentElement.classList.add("tollgate-checking");
  window.history.replaceState(null, "", clean);
  fetch("/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: match[1] })
  })
    .catch(function () { return null; })
    .then(function () { window.location.reload(); });
})();
