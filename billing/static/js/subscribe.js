/*
 * Card entry and 3-D Secure with Stripe.js, for the subscribe page, the card page and the
 * "confirm your payment" page. Loaded after Stripe.js (both deferred); no inline script needed.
 *
 * A card form ([data-card-form]): on submit, ask the server for a SetupIntent client secret
 * (POST data-setup-intent-url, CSRF token in the X-CSRFToken header), confirm it with the card
 * element (stripe.confirmCardSetup, which runs 3-D Secure when the bank asks), put the saved
 * payment method's id in the hidden field and submit the form. The card number never reaches us.
 *
 * A payment to authenticate ([data-authenticate]): stripe.confirmCardPayment with the
 * PaymentIntent's client secret, then go to data-next-url.
 */
(function () {
  "use strict";

  var GENERIC_ERROR = "Something went wrong while saving your card. Please try again.";
  var FIELD_LABELS = {
    number: "Card number",
    exp_month: "Expiry month (MM)",
    exp_year: "Expiry year (YY)",
    cvc: "Security code (CVC)",
    postal_code: "Postcode"
  };

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function stripeFor(element) {
    if (typeof window.Stripe !== "function") {
      return null;
    }
    return window.Stripe(element.getAttribute("data-stripe-key"));
  }

  function messageOf(error) {
    if (error && typeof error.message === "string" && error.message) {
      return error.message;
    }
    return GENERIC_ERROR;
  }

  // Stripe's own element is an iframe with its own labels; the development stand-in renders
  // plain inputs with placeholders only, so give those an accessible name.
  function labelPlainInputs(container) {
    var inputs = container.querySelectorAll("input");
    Array.prototype.forEach.call(inputs, function (input) {
      var key = input.getAttribute("placeholder");
      if (key && FIELD_LABELS[key] && !input.hasAttribute("aria-label")) {
        input.setAttribute("aria-label", FIELD_LABELS[key]);
      }
    });
  }

  function setupCardForm(form) {
    var mountPoint = form.querySelector("[data-card-element]");
    var errors = form.querySelector("[data-card-errors]");
    var hidden = form.querySelector('input[name="payment_method"]');
    var button = form.querySelector('button[type="submit"]');
    var field = mountPoint.closest(".field");
    var stripe = stripeFor(form);

    function showError(message) {
      errors.textContent = message;
      if (field) {
        field.classList.add("has-error");
      }
    }

    function clearError() {
      errors.textContent = "";
      if (field) {
        field.classList.remove("has-error");
      }
    }

    function busy(isBusy) {
      button.disabled = isBusy;
      form.setAttribute("aria-busy", isBusy ? "true" : "false");
    }

    if (!stripe) {
      showError("The card form could not be loaded. Please reload the page.");
      return;
    }
    var card = stripe.elements().create("card");
    card.mount(mountPoint);
    labelPlainInputs(mountPoint);
    card.on("change", function (event) {
      if (event && event.error) {
        showError(event.error.message);
      } else if (errors.textContent) {
        clearError();
      }
    });
    hidden.value = "";
    window.addEventListener("pageshow", function () {
      hidden.value = "";
      busy(false);
    });

    form.addEventListener("submit", function (event) {
      if (hidden.value) {
        return;
      }
      event.preventDefault();
      clearError();
      busy(true);
      fetch(form.getAttribute("data-setup-intent-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" }
      })
        .then(function (response) {
          return response.json().catch(function () {
            return {};
          }).then(function (body) {
            if (!response.ok || !body.client_secret) {
              throw new Error((body.error && body.error.message) || GENERIC_ERROR);
            }
            return stripe.confirmCardSetup(body.client_secret, {
              payment_method: { card: card }
            });
          });
        })
        .then(function (result) {
          if (!result || result.error || !result.setupIntent) {
            throw new Error(messageOf(result && result.error));
          }
          var method = result.setupIntent.payment_method;
          hidden.value = typeof method === "string" ? method : method.id;
          form.submit();
        })
        .catch(function (error) {
          showError(messageOf(error));
          busy(false);
        });
    });
  }

  function setupAuthentication(box) {
    var status = box.querySelector("[data-auth-status]");
    var retry = box.querySelector("[data-auth-retry]");
    var stripe = stripeFor(box);

    function fail(message) {
      status.textContent = message + " You can try again or use another card.";
      status.classList.add("error");
      retry.hidden = false;
      retry.disabled = false;
    }

    function run() {
      retry.disabled = true;
      status.classList.remove("error");
      status.textContent = "Waiting for your bank…";
      stripe
        .confirmCardPayment(box.getAttribute("data-client-secret"))
        .then(function (result) {
          if (!result || result.error) {
            fail(messageOf(result && result.error));
            return;
          }
          var intent = result.paymentIntent || {};
          if (intent.status && intent.status !== "succeeded" && intent.status !== "processing") {
            fail("Your bank did not confirm the payment.");
            return;
          }
          status.textContent = "Payment confirmed. One moment…";
          window.location.assign(box.getAttribute("data-next-url"));
        })
        .catch(function (error) {
          fail(messageOf(error));
        });
    }

    if (!stripe) {
      status.textContent = "The payment check could not be loaded. Please reload the page.";
      status.classList.add("error");
      return;
    }
    retry.addEventListener("click", run);
    run();
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-card-form]"), setupCardForm);
    Array.prototype.forEach.call(
      document.querySelectorAll("[data-authenticate]"),
      setupAuthentication
    );
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
