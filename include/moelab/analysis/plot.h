// PNG plots rendered by gnuplot (Debian's gnuplot-nox, pngcairo terminal). Each plot writes its
// data (NAME.dat) and script (NAME.gp) next to NAME.png, so a reader can re-render or restyle
// it; gnuplot missing or failing is a clear error.
#pragma once

#include <string>
#include <vector>

namespace moelab::analysis {

struct Series {
  std::string title;
  std::vector<double> x, y;
  bool dashed = false;
  int color = 0;  // gnuplot line colour index; 0 = by position
};

struct PlotLabels {
  std::string title, xlabel, ylabel;
};

/// Lines over x, one per series, with a legend.
void line_plot(const std::string& png, const PlotLabels& labels, const std::vector<Series>& series,
               bool log_y = false);

/// Clustered bars: one cluster per category, one bar per series (series[i].y[category]).
void bar_plot(const std::string& png, const PlotLabels& labels,
              const std::vector<std::string>& categories, const std::vector<Series>& series);

/// A matrix as coloured cells with its value printed in each, rows labelled `row_labels` (top
/// to bottom), columns `column_labels`.
void heatmap(const std::string& png, const PlotLabels& labels,
             const std::vector<std::string>& row_labels,
             const std::vector<std::string>& column_labels,
             const std::vector<std::vector<double>>& values);

/// Labelled points (x, y, name), optionally with a logarithmic x axis.
void scatter_plot(const std::string& png, const PlotLabels& labels, const std::vector<double>& x,
                  const std::vector<double>& y, const std::vector<std::string>& names, bool log_x);

}  // namespace moelab::analysis
