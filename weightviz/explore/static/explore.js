// weightviz explorer: source tabs, the "expand from" chooser (live server only), arrow-key paging.
(function () {
  "use strict";
  document.querySelectorAll(".tabs .tab").forEach(function (tab) {
    tab.addEventListener("click", function () {
      var bar = tab.parentNode;
      bar.querySelectorAll(".tab").forEach(function (t) { t.classList.toggle("active", t === tab); });
      document.querySelectorAll(".panel").forEach(function (p) {
        p.classList.toggle("active", p.id === tab.getAttribute("data-panel"));
      });
    });
  });
  var select = document.getElementById("src-select");
  if (select) {
    select.addEventListener("change", function () {
      if (select.value) { window.location.href = select.getAttribute("data-base") + "?src=" + encodeURIComponent(select.value); }
    });
  }
  document.addEventListener("keydown", function (e) {
    if (e.target && /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) { return; }
    var rel = e.key === "ArrowLeft" ? "prev" : e.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) { window.location.href = link.href; }
  });
})();
