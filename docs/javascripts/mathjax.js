// MathJax 2, served from the site itself (javascripts/mathjax/, copied in by the docs hook from
// jupyter-server-mathjax): typesets pymdownx.arithmatex's \( \) and \[ \]. Notebook pages load
// the same copy themselves (mkdocs-jupyter's custom_mathjax_url), so it is loaded once.
(function () {
  var base = document.currentScript.src.replace(/mathjax\.js(\?.*)?$/, "mathjax/");
  if (document.querySelector('script[src*="MathJax.js"]')) return;
  window.MathJax = {
    tex2jax: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
      ignoreClass: ".*|",
      processClass: "arithmatex"
    }
  };
  var script = document.createElement("script");
  script.src = base + "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,local/cove";
  document.head.appendChild(script);
})();
