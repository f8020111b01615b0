// The perturbation task: predict a cell line's expression after treatment (CheMoE, PDGrapher),
// scored the way their papers score it, on differential expression: trueDE = treated - basal,
// predDE = prediction - basal (the batch's `basal`, (B, G)).
//
//   outputs  (B, G) predicted treated expression; targets (B, G) the measured one.
//   loss     per sample: mean squared error over the genes.
//   metrics  loss; mse; r2_top20, r2_top40, r2_top80: per sample, Pearson r squared between
//            trueDE and predDE over the 20 (40, 80) genes of largest |trueDE|, averaged over the
//            samples; pearson_de: per sample Pearson r over all genes, averaged. A sample whose
//            trueDE or predDE is constant over the genes scored has no r: it is skipped and
//            counted (details.skipped). Details: the same metrics per cell line (by the batch's
//            cell_line index; all samples are cell line 0 without it).
#pragma once

#include <memory>

#include "moelab/train/task.h"

namespace moelab::train {

std::shared_ptr<Task> make_perturbation_task();

}  // namespace moelab::train
